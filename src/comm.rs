//! The communicator.
/// Config stub.
#[derive(Debug, Clone, Default)]
pub struct Config {}
/// Transport stub.
#[derive(Debug, Clone, Copy)]
pub enum TransportKind {
    /// TCP
    Tcp,
}
/// Communicator stub.
pub struct Communicator {}
