//! The configuration forms and their errors, without root.

use super::*;
use crate::switch::VlanMode;
use crate::xsk::BindMode;

#[test]
fn to_toml_reads_back_to_the_same_config() {
    let text = "mode = \"switch\"\nfast_path = false\ncores = [1]\nstats_interval = 5\n\
        [umem]\nframe_size = 2048\nframes = 1024\n[fdb]\nmax_age = 30\nlearn_rate = 500\n\
        [[port]]\nkind = \"afxdp\"\niface = \"v0\"\nqueues = [0, 1]\nvlan = 10\n\
        [[port]]\nkind = \"afxdp\"\niface = \"v1\"\ntrunk = [10, 20]\nnative_vlan = 5\nbind = \"copy\"\n\
        [[port]]\nkind = \"veth\"\niface = \"c0\"\ntrunk = [10]\nmax_macs = 16\n\
        [[port]]\nkind = \"tap\"\niface = \"vm0\"\nqueues = [2]\n\
        [[port]]\nkind = \"vhost-user\"\npath = \"/run/dataplane/vm1.sock\"\nvlan = 4\nowner = \"libvirt-qemu:kvm\"\n";
    let c = RunConfig::from_toml(text, "t").unwrap();
    let written = c.to_toml();
    let again = RunConfig::from_toml(&written, "again").unwrap();
    assert_eq!(c, again, "{written}");
    // Every value spelled out, each key once, in the file's own tables.
    let doc: toml::Table = written.parse().unwrap();
    assert_eq!(doc["umem"]["frames"].as_integer(), Some(1024), "{written}");
    assert_eq!(
        doc["fdb"]["max_entries"].as_integer(),
        Some(8192),
        "{written}"
    );
    assert_eq!(doc["port"].as_array().map(Vec::len), Some(5), "{written}");
    assert!(!doc.contains_key("core"), "cores only: {written}");
    let tap = &doc["port"][3];
    assert_eq!(tap["queues"].as_array().map(Vec::len), Some(1), "{written}");
    assert_eq!(
        doc["port"][4].get("iface"),
        None,
        "vhost-user has a path: {written}"
    );
}

#[test]
fn spec_parses_back_to_the_same_port() {
    for spec in [
        "afxdp:v0",
        "afxdp:v1,queues=0+1,vlan=10",
        "afxdp:v2,trunk=10+20,native=5,bind=copy",
        "afxdp:v3,native=7",
        "veth:c0",
        "veth:c1,vlan=10",
        "veth:c2,max_macs=4",
        "tap:vm0,queues=2,vlan=3",
        "vhost-user:/run/dataplane/vm1.sock,vlan=4",
        "vhost-user:/run/dataplane/vm2.sock,owner=libvirt-qemu",
        "vhost-user:/run/dataplane/vm3.sock,owner=:kvm",
        "vxlan:u1,vni=100,local=10.99.0.1,remote=10.99.0.2",
        "vxlan:u1,queues=0+1,vni=7,local=10.0.0.1,remote=10.0.0.2+10.0.0.3,port=8472,vlan=10",
    ] {
        let p = parse_port_spec(spec).unwrap();
        assert_eq!(p.spec(), spec);
        assert_eq!(parse_port_spec(&p.spec()).unwrap(), p);
    }
}

#[test]
fn flag_form() {
    let c = RunConfig::from_flags(
        &[
            "afxdp:v0".into(),
            "afxdp:v1,vlan=10,queues=0+1,bind=copy".into(),
        ],
        RunFlags {
            cores: vec![1],
            ..RunFlags::default()
        },
    )
    .unwrap();
    assert_eq!(c.ports[0].vlan, VlanMode::default());
    assert_eq!(c.ports[1].vlan, VlanMode::Access(10));
    assert_eq!(c.ports[1].queues, vec![0, 1]);
    assert_eq!(c.ports[1].bind, BindMode::Copy);
}

#[test]
fn every_number_a_user_gives_is_range_checked() {
    let flag = |s: &str| parse_port_spec(s).unwrap_err().to_string();
    assert!(
        flag("afxdp:v0,trunk=65546").contains("trunk"),
        "65546 is not VLAN 10"
    );
    assert!(flag("afxdp:v0,trunk=10+4095").contains("1-4094"));
    assert!(flag("afxdp:v0,vlan=1,vlan=2").contains("given twice"));
    assert!(flag("afxdp:v0,vlan=4095").contains("4095"));
    assert!(flag("afxdp:v0,native=0").contains('0'));
    assert!(flag("tap:vm0,queues=17").contains("1-16"));
    assert!(flag("veth:c0,max_macs=0").contains("max_macs"));
    assert!(flag("veth:c0,max_macs=1048577").contains("1-1048576"));
    assert!(
        flag("afxdp:a\u{1b}[2J").contains("is invalid"),
        "control characters"
    );
    assert!(flag("afxdp:a/b").contains("is invalid"));
    assert!(flag("afxdp:..").contains("is invalid"));
    let toml = |body: &str| {
        RunConfig::from_toml(body, "t.toml")
            .unwrap_err()
            .to_string()
    };
    let port = "[[port]]\nkind = \"afxdp\"\niface = \"v0\"\n";
    assert!(
        toml(&format!("{port}queues = []\n")).contains("at least one"),
        "an AF_XDP port with no queue"
    );
    assert!(
        toml("[[port]]\nkind = \"tap\"\niface = \"t0\"\nqueues = [4294967295]\n").contains("1-16")
    );
    assert!(
        toml("[[port]]\nkind = \"afxdp\"\niface = \"a-very-long-name0\"\n").contains("1-15 bytes")
    );
    assert!(toml(&format!("cores = [5000]\n{port}")).contains("cores"));
    assert!(toml(&format!("[fdb]\nmax_entries = 0\n{port}")).contains("fdb.max_entries"));
    assert!(toml(&format!("[fdb]\nmax_age = 0\n{port}")).contains("fdb.max_age"));
    assert!(toml(&format!("[fdb]\nlearn_rate = 0\n{port}")).contains("fdb.learn_rate"));
    assert!(toml(&format!("[fdb]\nlearn_rate = 1000001\n{port}")).contains("line 2"));
    assert!(
        toml(&format!("stats_interval = 9223372036854775807\n{port}")).contains("stats_interval")
    );
    assert!(toml(&format!("socket_busy_poll = 4294967295\n{port}")).contains("socket_busy_poll"));
    assert!(toml(&format!("{port}trunk = [65546]\n")).contains("line 4, column 10"));
    assert!(toml(&format!("{port}max_macs = 0\n")).contains("line 4, column 12"));
}

#[test]
fn errors_found_after_parsing_carry_line_and_column() {
    let err = |body: &str| {
        RunConfig::from_toml(body, "t.toml")
            .unwrap_err()
            .to_string()
    };
    let port = |iface: &str| format!("[[port]]\nkind = \"afxdp\"\niface = \"{iface}\"\n");
    let two = format!("{}{}", port("v0"), port("v1"));
    let cases = [
        (
            format!("[fdb]\nmax_age = 0\n{two}"),
            "line 2, column 11",
            "fdb.max_age",
        ),
        (format!("burst = 0\n{two}"), "line 1, column 9", "burst"),
        (
            format!("cores = [0, 5000]\n{two}"),
            "line 1, column 9",
            "cores",
        ),
        (format!("core = 5000\n{two}"), "line 1, column 8", "cores"),
        (
            format!("{two}vlan = 4095\n"),
            "line 7, column 8",
            "VLAN 4095",
        ),
        (
            format!("{}native_vlan = 0\n{}", port("v0"), port("v1")),
            "line 4, column 15",
            "VLAN 0",
        ),
        (
            format!("{}queues = []\n", port("v0")),
            "line 4, column 10",
            "at least one",
        ),
        (
            format!("{}bind = \"fast\"\n", port("v0")),
            "line 4, column 8",
            "bind",
        ),
        (
            format!("{}{}", port("v0"), port("v0")),
            "line 6, column 9",
            "configured twice",
        ),
        (
            format!("mode = \"xconnect\"\n{}", port("v0")),
            "line 1, column 8",
            "even number",
        ),
        (
            format!("{}[[port]]\nkind = \"tap\"\n", port("v0")),
            "line 4, column 1",
            "needs `iface",
        ),
    ];
    for (body, place, what) in cases {
        let e = err(&body);
        assert!(
            e.starts_with(&format!("config t.toml, {place}: ")) && e.contains(what),
            "{body:?}: {e}"
        );
    }
}

#[test]
fn bad_flags_name_the_problem() {
    let err = |s: &str| parse_port_spec(s).unwrap_err();
    assert!(matches!(err("tap0"), Error::BadPortSpec { .. }));
    assert!(matches!(err("vhost:x"), Error::UnknownKind { kind, .. } if kind == "vhost"));
    assert!(matches!(err("tap:vm0,queues=0+1"), Error::BadValue { key, .. } if key == "queues"));
    assert!(
        matches!(err("afxdp:v0,color=red"), Error::UnknownOption { key, .. } if key == "color")
    );
    assert!(matches!(err("afxdp:v0,vlan=x"), Error::BadValue { key, .. } if key == "vlan"));
    assert!(matches!(err("veth:c0,queues=1"), Error::BadValue { key, .. } if key == "queues"));
    assert!(matches!(
        err("afxdp:v0,vlan=5000"),
        Error::VlanRange { vid: 5000, .. }
    ));
    assert!(matches!(
        err("afxdp:v0,vlan=1,trunk=2"),
        Error::AccessAndTrunk { .. }
    ));
    let dup = RunConfig::from_flags(&["afxdp:v0".into(), "afxdp:v0".into()], RunFlags::default());
    assert_eq!(
        dup,
        Err(Error::DuplicatePort {
            name: "afxdp:v0".into()
        })
    );
    let odd = RunConfig::from_flags(
        &["afxdp:v0".into()],
        RunFlags {
            mode: ForwardingMode::Xconnect,
            ..RunFlags::default()
        },
    );
    assert_eq!(odd, Err(Error::OddCrossConnect(1)));
    let fdb = |n| {
        RunConfig::from_flags(
            &["afxdp:v0".into()],
            RunFlags {
                fdb_max_entries: n,
                ..RunFlags::default()
            },
        )
    };
    assert_eq!(fdb(65536).unwrap().fdb.max_entries, 65536);
    for bad in [0, (1 << 20) + 1] {
        assert!(
            matches!(
                fdb(bad),
                Err(Error::Invalid {
                    field: "fdb.max_entries",
                    ..
                })
            ),
            "{bad}: {:?}",
            fdb(bad)
        );
    }
}

#[test]
fn tap_ports() {
    let p = parse_port_spec("tap:vm0,queues=2,vlan=10").unwrap();
    assert_eq!(
        (p.kind, p.queues.len(), p.name()),
        (PortKind::Tap, 2, "tap:vm0".to_string())
    );
    let c = RunConfig::from_toml(
        "[[port]]\nkind = \"tap\"\niface = \"vm0\"\nqueues = [4]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.ports[0].queues.len(), 4);
}

#[test]
fn vhost_user_ports() {
    let p = parse_port_spec("vhost-user:/run/dataplane/vm0.sock,vlan=10").unwrap();
    assert_eq!(
        (p.kind, p.iface.as_str(), p.name()),
        (
            PortKind::VhostUser,
            "/run/dataplane/vm0.sock",
            "vhost-user:/run/dataplane/vm0.sock".to_string()
        )
    );
    assert!(matches!(
        parse_port_spec("vhost-user:/a.sock,queues=2"),
        Err(Error::BadValue { key, .. }) if key == "queues"
    ));
    let long = format!("vhost-user:/{}", "x".repeat(200));
    assert!(matches!(
        parse_port_spec(&long),
        Err(Error::BadPortSpec { .. })
    ));
    let c = RunConfig::from_toml(
        "[[port]]\nkind = \"vhost-user\"\npath = \"/tmp/v.sock\"\n[[port]]\nkind = \"tap\"\niface = \"t0\"\n",
        "v.toml",
    )
    .unwrap();
    assert_eq!(c.ports[0].name(), "vhost-user:/tmp/v.sock");
    let missing = RunConfig::from_toml("[[port]]\nkind = \"vhost-user\"\n", "m.toml")
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("path =") && missing.contains("m.toml"),
        "{missing}"
    );
    let mixed = RunConfig::from_toml("[[port]]\nkind = \"afxdp\"\npath = \"/x\"\n", "p.toml")
        .unwrap_err()
        .to_string();
    assert!(mixed.contains("vhost-user ports only"), "{mixed}");
    // The socket can be given to the user libvirt runs QEMU as; nothing
    // else has a socket to give.
    let owned = parse_port_spec("vhost-user:/v.sock,owner=libvirt-qemu").unwrap();
    assert_eq!(
        owned.owner.as_ref().and_then(|o| o.user.as_deref()),
        Some("libvirt-qemu")
    );
    let not_vhost = parse_port_spec("afxdp:v0,owner=libvirt-qemu")
        .unwrap_err()
        .to_string();
    assert!(not_vhost.contains("only a vhost-user port"), "{not_vhost}");
    let bad_toml = RunConfig::from_toml(
        "[[port]]\nkind = \"vhost-user\"\npath = \"/v.sock\"\nowner = \"a b\"\n",
        "o.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad_toml.contains("owner") && bad_toml.contains("o.toml"),
        "{bad_toml}"
    );
    let unknown = parse_port_spec("vhost:/x").unwrap_err().to_string();
    assert!(
        unknown.contains("afxdp, veth, tap, vhost-user"),
        "{unknown}"
    );
}

#[test]
fn toml_form() {
    let c = RunConfig::from_toml(
        r#"
mode = "xconnect"
busy_poll = true
core = 1
[umem]
frames = 4096
[[port]]
kind = "afxdp"
iface = "a"
trunk = [10, 20]
native_vlan = 5
[[port]]
kind = "afxdp"
iface = "b"
"#,
        "test.toml",
    )
    .unwrap();
    assert_eq!(c.mode, ForwardingMode::Xconnect);
    assert!(c.busy_poll);
    assert_eq!(c.frames, 4096);
    assert_eq!(c.xconnect_peers(), vec![Some(1), Some(0)]);
    match &c.ports[0].vlan {
        VlanMode::Trunk { allowed, native } => {
            assert_eq!(*native, 5);
            assert!(allowed.as_ref().unwrap().contains(20));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn toml_syntax_errors_have_line_and_column() {
    let err = RunConfig::from_toml("mode = \"switch\"\nburst = \n", "x.toml").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("x.toml") && msg.contains("line 2, column"),
        "{msg}"
    );
    let unknown = RunConfig::from_toml(
        "[[port]]\nkind = \"afxdp\"\niface = \"a\"\ncolour = 1\n",
        "y.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        unknown.contains("line 4") && unknown.contains("colour"),
        "{unknown}"
    );
    let kind = RunConfig::from_toml("[[port]]\nkind = \"floppy\"\niface = \"a\"\n", "z.toml")
        .unwrap_err()
        .to_string();
    assert!(kind.contains("line 2") && kind.contains("floppy"), "{kind}");
}

#[test]
fn no_ports_is_an_error() {
    assert_eq!(RunConfig::from_toml("", "e.toml"), Err(Error::NoPorts));
}

#[test]
fn pmds_pin_each_queue_and_only_for_afxdp() {
    let p = parse_port_spec("afxdp:v0,queues=0+1,pmds=1+0").unwrap();
    assert_eq!(p.pmds, Some(vec![1, 0]));
    assert_eq!(p.spec(), "afxdp:v0,queues=0+1,pmds=1+0");
    assert!(matches!(
        parse_port_spec("afxdp:v0,queues=0+1,pmds=1").unwrap_err(),
        Error::BadValue { key, .. } if key == "pmds"
    ));
    assert!(matches!(
        parse_port_spec("tap:vm0,pmds=0").unwrap_err(),
        Error::BadValue { key, .. } if key == "pmds"
    ));
    let c = RunConfig::from_toml(
        "cores = [0, 1]\n[[port]]\nkind = \"afxdp\"\niface = \"v0\"\nqueues = [0, 1]\npmds = [1, 0]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.ports[0].pmds, Some(vec![1, 0]));
    assert!(c.to_toml().contains("pmds = [1, 0]"), "{}", c.to_toml());
    // A PMD this switch does not run.
    let err = RunConfig::from_flags(
        &["afxdp:v0,queues=0+1,pmds=0+2".into()],
        RunFlags::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid { field: "pmds", .. }), "{err}");
}

#[test]
fn max_ports_is_ranged_and_holds_the_ports() {
    let with = |specs: &[&str], max_ports| {
        RunConfig::from_flags(
            &specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            RunFlags {
                max_ports,
                ..RunFlags::default()
            },
        )
    };
    assert_eq!(with(&["afxdp:v0"], 256).unwrap().max_ports, 256);
    for bad in [1, 1025] {
        assert!(matches!(
            with(&["afxdp:v0"], bad),
            Err(Error::Invalid {
                field: "max_ports",
                ..
            })
        ));
    }
    assert!(matches!(
        with(&["afxdp:v0", "afxdp:v1", "afxdp:v2"], 2),
        Err(Error::Invalid {
            field: "max_ports",
            ..
        })
    ));
    let c = RunConfig::from_toml(
        "max_ports = 128\n[[port]]\nkind = \"afxdp\"\niface = \"v0\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.max_ports, 128);
    assert!(c.to_toml().contains("max_ports = 128"), "{}", c.to_toml());
}

#[test]
fn vxlan_ports() {
    // The issue's form: options first, the underlay as `dev`.
    let p =
        parse_port_spec("vxlan:vni=100,local=10.99.0.1,remote=10.99.0.2+10.99.0.3,dev=u1").unwrap();
    assert_eq!(
        (p.kind, p.name()),
        (PortKind::Vxlan, "vxlan:u1".to_string())
    );
    assert!(
        p.queues.is_empty(),
        "every queue of the underlay by default"
    );
    let t = p.vxlan.as_ref().unwrap();
    assert_eq!((t.vni, t.udp_port, t.remotes.len()), (100, 4789, 2));
    assert_eq!(t.local.to_string(), "10.99.0.1");
    for (spec, says) in [
        ("vxlan:vni=1,local=10.0.0.1,remote=10.0.0.2", "dev=IF"),
        ("vxlan:u1,local=10.0.0.1,remote=10.0.0.2", "vni=N"),
        ("vxlan:u1,vni=1,remote=10.0.0.2", "local=IP"),
        ("vxlan:u1,vni=1,local=10.0.0.1", "at least one remote"),
        (
            "vxlan:u1,vni=16777216,local=10.0.0.1,remote=10.0.0.2",
            "out of range",
        ),
        (
            "vxlan:u1,vni=1,local=10.0.0.1,remote=10.0.0.2+10.0.0.2",
            "twice",
        ),
        (
            "vxlan:u1,vni=1,local=10.0.0.1,remote=10.0.0.1",
            "the local address",
        ),
        (
            "vxlan:u1,vni=1,local=10.0.0.1,remote=10.0.0.300",
            "not an IPv4 address",
        ),
        (
            "vxlan:u1,vni=1,local=10.0.0.1,remote=10.0.0.2,dev=u2",
            "named twice",
        ),
        ("afxdp:v0,vni=1", "only a vxlan port"),
    ] {
        let err = parse_port_spec(spec).unwrap_err().to_string();
        assert!(err.contains(says), "{spec}: {err}");
    }
    let c = RunConfig::from_toml(
        "[[port]]\nkind = \"vxlan\"\niface = \"u1\"\nvni = 5\nlocal = \"10.0.0.1\"\nremote = [\"10.0.0.2\"]\n",
        "v.toml",
    )
    .unwrap();
    assert_eq!(
        c.ports[0].spec(),
        "vxlan:u1,vni=5,local=10.0.0.1,remote=10.0.0.2"
    );
    let again = RunConfig::from_toml(&c.to_toml(), "again").unwrap();
    assert_eq!(c, again);
    let missing = RunConfig::from_toml(
        "[[port]]\nkind = \"vxlan\"\niface = \"u1\"\nlocal = \"10.0.0.1\"\n",
        "m.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("vni") && missing.contains("m.toml"),
        "{missing}"
    );
    let stray = RunConfig::from_toml(
        "[[port]]\nkind = \"afxdp\"\niface = \"v0\"\nvni = 5\n",
        "s.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(stray.contains("only a vxlan port"), "{stray}");
}
