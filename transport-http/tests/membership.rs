//! A node whose `--advertise` is not in its peers' `--peers` (issue 9, 6):
//! it would form a cluster of its own and answer writes with 200; instead it
//! stays not ready while every peer refuses it.

mod common;

use std::time::Duration;

use common::{Node, fast_with, free_ports, instance, scratch, secret_file};

#[test]
fn a_node_its_peers_do_not_list_stays_not_ready_and_refuses_writes() {
    let dir = scratch("membership");
    let secret = secret_file(&dir);
    let ports = free_ports(3);
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let args = |peers: String| {
        let mut a = fast_with(&[]);
        a.extend([
            "--peers".to_owned(),
            peers,
            "--cluster-secret-file".to_owned(),
            secret.display().to_string(),
        ]);
        a
    };
    // b lists only an address nobody serves: it starts alone, as before.
    let b = Node::start(ports[1], &args(addr(ports[2])), &dir);
    b.wait_ready(Duration::from_secs(15));
    // a lists b, but b does not list a: every frame of a is refused.
    let a = Node::start(ports[0], &args(addr(ports[1])), &dir);
    // Past the startup timeout (5 s) a lone node would serve; this one does not.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(a.get("/health/ready").status, 503, "{}", a.get("/health/ready").text());
    let r = a.req("POST", "/v1/instances", Some(&instance("orders", "10.0.0.1", 8080)));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(b.get("/health/ready").status, 200);
}
