//! Free TCP ports on the loopback interface.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process. Tests run in parallel threads and the kernel may
/// offer a port again as soon as our probe socket is closed; remembering them keeps two
/// instances of one test binary from racing for the same port. Collisions with other processes
/// remain possible and are handled by the callers' retries.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
///
/// # Panics
/// When the loopback interface cannot bind at all, which no test could survive anyway.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let port = match probe() {
            Ok(port) => port,
            Err(_) => continue,
        };
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("testkit: could not find a free TCP port on 127.0.0.1 after 100 attempts");
}

fn probe() -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
