pub mod resp;
pub mod store;
