//! AF_XDP sockets (in progress)
