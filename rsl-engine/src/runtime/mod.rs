//! The runtime: drives the sans-IO core against real disks, sockets and threads.
