//! RESP, the Redis serialization protocol: request parsing and reply encoding.
//!
//! Both halves are pure code over byte buffers: no sockets, no clocks, no shard state. That keeps
//! them unit-testable byte by byte and fuzzable without io_uring.
//!
//! - [`parse`] turns the bytes a client sent into commands (`Vec<Bytes>` of arguments). It
//!   resumes where it stopped, so a command that arrives one byte at a time is scanned once, and
//!   it never allocates on a length the client merely *declared*.
//! - [`encode`] writes replies in RESP2 or RESP3, chosen per connection by `HELLO`.

pub mod encode;
pub mod parse;

pub use encode::{LargeRefs, Protocol, ReplyWriter};
pub use parse::{Limits, ParseError, Parser};
