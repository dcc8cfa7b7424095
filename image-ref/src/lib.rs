//! How wharf reads a container's `image`, shared by the API server (which defaults
//! `imagePullPolicy` from it, as Kubernetes does), the node and the runtime (which fetch a
//! file, a URL or a registry image by it), and the CLI. One place, so that the policy the
//! API stores and the fetch the runtime makes never disagree about what an image is.
//!
//! Pure string rules, no dependencies: the reference grammar itself (registry, repository,
//! tag, digest) is parsed by the runtime's OCI client when it pulls.

/// Whether `image` names a registry image rather than a local file or a URL: not a URL,
/// not starting with `/` or `.`, and not ending in `.wasm` (before any `@sha256:` pin).
/// So `samples/app.wasm` is a path and `registry.example.com/app:1.0` an image; a file
/// whose name does not end in `.wasm` is named by an absolute or `./` path.
pub fn is_registry_reference(image: &str) -> bool {
    let image = image.trim();
    let location = image.split_once('@').map_or(image, |(l, _)| l);
    !(location.is_empty()
        || location.contains("://")
        || location.starts_with('/')
        || location.starts_with('.')
        || location.ends_with(".wasm"))
}

/// The pull policy Kubernetes defaults a container to: `Always` for a registry image
/// tagged `:latest` or not tagged at all (and not pinned by digest), `IfNotPresent`
/// otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    if !is_registry_reference(image) {
        return "IfNotPresent";
    }
    let (name, pinned) = match image.trim().split_once('@') {
        Some((n, _)) => (n, true),
        None => (image.trim(), false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
        None if pinned => "IfNotPresent",
        None => "Always",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn classifies_references() {
        for path in [
            "app.wasm",
            "samples/hello/hello.wasm",
            "/abs/app",
            "./app",
            "../x/app",
            "file:///a.wasm",
            "http://h/app",
            &format!("app.wasm@sha256:{HEX}"),
        ] {
            assert!(!is_registry_reference(path), "{path}");
        }
        for image in [
            "registry.example.com/team/app:1.0",
            "127.0.0.1:5000/app",
            "localhost/app@sha256:abc",
            "hello",
        ] {
            assert!(is_registry_reference(image), "{image}");
        }
    }

    #[test]
    fn default_policies_follow_kubernetes() {
        assert_eq!(default_pull_policy("r.io/app"), "Always");
        assert_eq!(default_pull_policy("r.io/app:latest"), "Always");
        assert_eq!(default_pull_policy("r.io:5000/app"), "Always");
        assert_eq!(default_pull_policy("r.io:5000/app:1.0"), "IfNotPresent");
        assert_eq!(
            default_pull_policy(&format!("r.io/app@sha256:{HEX}")),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("app.wasm"), "IfNotPresent");
    }
}
