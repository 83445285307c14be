//! Where a list comes from and how it is read: HTTPS with its proxy ([`http`]), DNS
//! ([`dns`]), the document formats ([`format`]) and the built-in providers
//! ([`presets`]).

pub(crate) mod dns;
pub(crate) mod format;
pub(crate) mod http;
pub(crate) mod presets;
