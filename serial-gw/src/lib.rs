//! The serial gateway: the RFC 2217 codec and the gateway I/O that serves
//! local ports on TCP or presents networked serial servers as TCP or a pty,
//! active only while the node is primary. Filled by the serial issue.
