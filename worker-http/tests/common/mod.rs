pub mod client;
pub mod direct;
pub mod http_backend;
