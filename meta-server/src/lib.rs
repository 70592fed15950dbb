//! cairn-meta: the metadata service. STUB module map.
pub mod command;
pub mod error;
pub mod fsm;
pub mod node;
pub mod placement;
pub mod service;
