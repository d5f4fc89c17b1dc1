pub mod resp;
pub mod store;
pub mod wal;
