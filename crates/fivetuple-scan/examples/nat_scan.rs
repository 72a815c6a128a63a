//! Prints the NAT view of a namespace as JSON: `nat_scan [NETNS]` (a name
//! under /run/netns; the current namespace without one). Needs root.

fn main() {
    let target = match std::env::args().nth(1) {
        Some(name) => fivetuple_scan::netns::Target::Named(name),
        None => fivetuple_scan::netns::Target::Current,
    };
    match fivetuple_scan::nat::scan_in(&target) {
        Ok(snap) => println!(
            "{}",
            serde_json::to_string_pretty(&snap).expect("serialize")
        ),
        Err(e) => {
            eprintln!("nat_scan: {e}");
            std::process::exit(1);
        }
    }
}
