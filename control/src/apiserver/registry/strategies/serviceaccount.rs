//! ServiceAccounts: nothing special in the registry but their `token` subresource (a
//! TokenRequest, [`crate::apiserver::serviceaccounts`]) and how kubectl prints them.

use super::super::Strategy;
use super::super::subresources::Subresource;
use crate::api::printers;
use crate::apiserver::serviceaccounts;

pub struct ServiceAccountStrategy;

pub static STRATEGY: ServiceAccountStrategy = ServiceAccountStrategy;

static SUBRESOURCES: &[&Subresource] = &[&serviceaccounts::TOKEN];

impl Strategy for ServiceAccountStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        SUBRESOURCES
    }

    fn printer(&self) -> &'static printers::Printer {
        &printers::SERVICE_ACCOUNT
    }
}
