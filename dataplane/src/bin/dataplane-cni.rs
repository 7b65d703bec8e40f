//! `dataplane-cni`: the CNI plugin (see `dataplane::cni`). The runtime
//! execs it with `CNI_*` variables and the network configuration on stdin;
//! it answers on stdout: a result, nothing, or the spec's error object
//! (then exit status 1).

use std::io::Read;

fn main() {
    let env = dataplane::cni::CniEnv::from_env();
    let mut stdin = String::new();
    if env.command != "VERSION" {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    match dataplane::cni::run(&env, &stdin) {
        Ok(Some(result)) => println!("{result}"),
        Ok(None) => {}
        Err(e) => {
            println!(
                "{}",
                serde_json::to_string(&e).expect("an error always encodes")
            );
            std::process::exit(1);
        }
    }
}
