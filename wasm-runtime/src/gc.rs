//! Image garbage collection: which images a node removes, and when.
//!
//! A node keeps every image it pulled (blobs, tag records and compiled artifacts in its
//! data dir) so that a restarted pod starts without a download. Without a bound the disk
//! fills, so the node collects images as the kubelet does: when the disk holding the
//! image store is used above a high threshold (`imageGCHighThresholdPercent`, 85), it
//! removes unused images, least recently used first, until usage is back under the low
//! threshold (`imageGCLowThresholdPercent`, 80); an image first seen less than the minimum
//! age ago (`imageMinimumGCAge`, 2 min) is never removed, so a pull is not undone before
//! its pod starts; and with a maximum age (`imageMaximumGCAge`, off by default) an image
//! unused for longer is removed whatever the disk usage.
//!
//! [`plan`] is the decision, a pure function of the images, the disk and the clock; the
//! runtime removes what it names (`Runtime::collect_images`).

use std::time::{Duration, Instant};

use crate::image::Digest;

/// The kubelet's image garbage collection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageGcPolicy {
    /// Disk usage (percent) at or above which unused images are removed.
    pub high_threshold_percent: u8,
    /// Disk usage (percent) the collection brings the disk back to.
    pub low_threshold_percent: u8,
    /// Images first seen less than this long ago are kept.
    pub minimum_age: Duration,
    /// Images unused for longer than this are removed; `None`: never by age.
    pub maximum_age: Option<Duration>,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        ImageGcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            minimum_age: Duration::from_secs(120),
            maximum_age: None,
        }
    }
}

impl ImageGcPolicy {
    /// Checks the thresholds as the kubelet does: each at most 100, low below high (a high
    /// threshold of 100 turns collection by disk usage off).
    pub fn validate(&self) -> Result<(), String> {
        let (high, low) = (self.high_threshold_percent, self.low_threshold_percent);
        if high > 100 {
            return Err(format!(
                "invalid image-gc-high-threshold {high}: must be between 0 and 100"
            ));
        }
        if low > 100 {
            return Err(format!(
                "invalid image-gc-low-threshold {low}: must be between 0 and 100"
            ));
        }
        if low >= high && high < 100 {
            return Err(format!(
                "image-gc-low-threshold {low} must be less than image-gc-high-threshold {high}"
            ));
        }
        Ok(())
    }
}

/// One image the node holds, as the collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUsage {
    /// The digest of the image's `.wasm`.
    pub digest: Digest,
    /// Bytes the image occupies in the store.
    pub size: u64,
    pub first_seen: Instant,
    pub last_used: Instant,
    /// A pod on the node names it.
    pub in_use: bool,
}

/// The file system holding the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub capacity: u64,
    pub available: u64,
}

impl DiskUsage {
    /// Bytes used (capacity minus what is available to the node).
    pub fn used(&self) -> u64 {
        self.capacity.saturating_sub(self.available)
    }

    /// The usage in percent (0 for an empty file system), rounded down.
    pub fn percent(&self) -> u64 {
        (self.used() * 100).checked_div(self.capacity).unwrap_or(0)
    }
}

/// What a collection removes, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// Unused for longer than the maximum age.
    pub expired: Vec<Digest>,
    /// Least recently used, to bring the disk under the low threshold.
    pub for_space: Vec<Digest>,
    /// Bytes the disk was over the low threshold (0 if under the high one).
    pub bytes_to_free: u64,
}

impl GcPlan {
    pub fn is_empty(&self) -> bool {
        self.expired.is_empty() && self.for_space.is_empty()
    }

    /// Every image to remove.
    pub fn all(&self) -> impl Iterator<Item = &Digest> {
        self.expired.iter().chain(&self.for_space)
    }
}

/// Decides which images to remove now. Images in use are never removed, nor images first
/// seen less than the minimum age ago.
pub fn plan(
    images: &[ImageUsage],
    disk: DiskUsage,
    policy: &ImageGcPolicy,
    now: Instant,
) -> GcPlan {
    let age = |since: Instant| now.saturating_duration_since(since);
    let removable: Vec<&ImageUsage> = images
        .iter()
        .filter(|i| !i.in_use && age(i.first_seen) >= policy.minimum_age)
        .collect();
    let mut out = GcPlan::default();
    let mut freed = 0u64;
    if let Some(max) = policy.maximum_age {
        for i in &removable {
            if age(i.last_used) > max {
                out.expired.push(i.digest);
                freed += i.size;
            }
        }
    }
    if policy.high_threshold_percent >= 100
        || disk.percent() < u64::from(policy.high_threshold_percent)
    {
        return out;
    }
    let low = disk.capacity * u64::from(policy.low_threshold_percent) / 100;
    out.bytes_to_free = disk.used().saturating_sub(low);
    let mut lru: Vec<&&ImageUsage> = removable
        .iter()
        .filter(|i| !out.expired.contains(&i.digest))
        .collect();
    lru.sort_by_key(|i| (i.last_used, i.digest));
    for i in lru {
        if freed >= out.bytes_to_free {
            break;
        }
        out.for_space.push(i.digest);
        freed += i.size;
    }
    out
}

/// The disk usage of the file system holding `path`.
pub fn disk_usage(path: &std::path::Path) -> std::io::Result<DiskUsage> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    Ok(DiskUsage {
        capacity: st.f_blocks.saturating_mul(frsize),
        available: st.f_bavail.saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    /// An image `n` of `size` bytes, first seen `seen` seconds before `now`, last used
    /// `used` seconds before it.
    fn image(now: Instant, n: u8, size: u64, seen: u64, used: u64, in_use: bool) -> ImageUsage {
        ImageUsage {
            digest: digest(n),
            size,
            first_seen: now - Duration::from_secs(seen),
            last_used: now - Duration::from_secs(used),
            in_use,
        }
    }

    const GB: u64 = 1 << 30;

    #[test]
    fn under_the_high_threshold_nothing_is_removed() {
        let now = Instant::now() + Duration::from_secs(100_000);
        let images = [image(now, 1, GB, 3600, 3600, false)];
        let disk = DiskUsage {
            capacity: 100 * GB,
            available: 16 * GB,
        }; // 84 %
        assert!(plan(&images, disk, &ImageGcPolicy::default(), now).is_empty());
    }

    #[test]
    fn over_it_the_least_recently_used_unused_images_go_until_the_low_threshold() {
        let now = Instant::now() + Duration::from_secs(100_000);
        let images = [
            image(now, 1, 2 * GB, 9000, 100, false),  // recent
            image(now, 2, 2 * GB, 9000, 5000, false), // oldest use
            image(now, 3, 2 * GB, 9000, 9000, true),  // oldest, but in use
            image(now, 4, 2 * GB, 9000, 3000, false),
            image(now, 5, 9 * GB, 60, 60, false), // too young to remove
        ];
        // 90 % used: 10 GiB over the low threshold.
        let disk = DiskUsage {
            capacity: 100 * GB,
            available: 10 * GB,
        };
        let p = plan(&images, disk, &ImageGcPolicy::default(), now);
        assert_eq!(p.bytes_to_free, 10 * GB);
        // Not enough to reach it without the young and the used ones: every other goes,
        // oldest use first.
        assert_eq!(p.for_space, [digest(2), digest(4), digest(1)]);
        // 86 %: 6 GiB to free, two images of 2 GiB are not enough, three are.
        let disk = DiskUsage {
            capacity: 100 * GB,
            available: 14 * GB,
        };
        let p = plan(&images, disk, &ImageGcPolicy::default(), now);
        assert_eq!(p.for_space, [digest(2), digest(4), digest(1)]);
        // 85 %: 5 GiB.
        let disk = DiskUsage {
            capacity: 100 * GB,
            available: 15 * GB,
        };
        let p = plan(&images, disk, &ImageGcPolicy::default(), now);
        assert_eq!(p.for_space, [digest(2), digest(4), digest(1)]);
        let policy = ImageGcPolicy {
            low_threshold_percent: 82,
            ..Default::default()
        };
        let p = plan(&images, disk, &policy, now);
        assert_eq!(p.bytes_to_free, 3 * GB);
        assert_eq!(p.for_space, [digest(2), digest(4)]);
    }

    #[test]
    fn the_maximum_age_removes_unused_images_whatever_the_disk() {
        let now = Instant::now() + Duration::from_secs(100_000);
        let images = [
            image(now, 1, GB, 9000, 7200, false),
            image(now, 2, GB, 9000, 7200, true),
            image(now, 3, GB, 9000, 60, false),
        ];
        let disk = DiskUsage {
            capacity: 100 * GB,
            available: 90 * GB,
        };
        let policy = ImageGcPolicy {
            maximum_age: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let p = plan(&images, disk, &policy, now);
        assert_eq!(p.expired, [digest(1)]);
        assert!(p.for_space.is_empty());
        assert!(plan(&images, disk, &ImageGcPolicy::default(), now).is_empty());
    }

    #[test]
    fn a_high_threshold_of_100_turns_collection_by_usage_off() {
        let now = Instant::now() + Duration::from_secs(100_000);
        let images = [image(now, 1, GB, 9000, 9000, false)];
        let full = DiskUsage {
            capacity: 100 * GB,
            available: 0,
        };
        let policy = ImageGcPolicy {
            high_threshold_percent: 100,
            ..Default::default()
        };
        assert!(plan(&images, full, &policy, now).is_empty());
        // And thresholds of 1 and 0 remove every unused image.
        let all = ImageGcPolicy {
            high_threshold_percent: 1,
            low_threshold_percent: 0,
            minimum_age: Duration::ZERO,
            maximum_age: None,
        };
        assert!(all.validate().is_ok());
        let half = DiskUsage {
            capacity: 100 * GB,
            available: 50 * GB,
        };
        assert_eq!(plan(&images, half, &all, now).for_space, [digest(1)]);
    }

    #[test]
    fn thresholds_are_checked() {
        let p = |high, low| ImageGcPolicy {
            high_threshold_percent: high,
            low_threshold_percent: low,
            ..Default::default()
        };
        assert!(p(85, 80).validate().is_ok());
        assert!(p(100, 100).validate().is_ok());
        assert!(p(0, 0).validate().is_err());
        assert_eq!(
            p(80, 85).validate().expect_err("low above high"),
            "image-gc-low-threshold 85 must be less than image-gc-high-threshold 80"
        );
        assert!(p(101, 80).validate().is_err());
    }
}
