use std::path::Path;

use expect_test::{expect, Expect};

use crate::parse::*;
use crate::*;

/// A small valid config. Line numbers matter to the snapshots below.
const MIN: &str = r#"[pair]
name = "p"
key_file = "/k"
data_dir = "/d"

[[node]]
name = "a"
replication = "10.0.0.1:7481"
heartbeat = ["udp://10.0.0.1:7482"]

[[node]]
name = "b"
replication = "10.0.0.2:7481"
heartbeat = ["udp://10.0.0.2:7482"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_str(text, Path::new("t.toml"))
}

/// `MIN` with each `(old, new)` replaced once, plus `extra` appended.
fn variant(edits: &[(&str, &str)], extra: &str) -> String {
    let mut s = MIN.to_string();
    for (old, new) in edits {
        assert!(s.contains(old), "{old:?} not in MIN");
        s = s.replacen(old, new, 1);
    }
    s + extra
}

fn check_err(text: &str, expected: Expect) {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => expected.assert_eq(&e.to_string()),
    }
}

#[test]
fn minimal_config_and_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.source, Path::new("t.toml"));
    assert_eq!(c.pair.failover, FailoverMode::Manual);
    assert_eq!(c.timing, Timing::default());
    assert_eq!(c.hooks, Hooks::default());
    assert_eq!(c.nodes[0].control, DEFAULT_CONTROL.parse().unwrap());
    assert_eq!(c.tiebreaker, None);
    assert!(c.databases.is_empty() && c.filesets.is_empty() && c.serial.is_empty());
    assert_eq!(c.data_dir(&c.nodes[1]), Path::new("/d"));
}

#[test]
fn example_parses() {
    let c = Config::parse_str(EXAMPLE, Path::new("examples/tandem.toml")).unwrap();
    assert_eq!(c.pair.failover, FailoverMode::Auto);
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(
        c.nodes[0]
            .heartbeat
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>(),
        [
            "udp://10.10.10.1:7482",
            "serial:///dev/ttyS1?baud=115200",
            "udp://192.168.1.11:7482"
        ]
    );
    assert_eq!(c.tiebreaker.as_ref().unwrap().reach.len(), 2);
    assert_eq!(c.hooks.on_promote[0], "/etc/tandem/hooks/vip up");
    assert_eq!(c.databases[0].wal_bytes_max, 64 << 20);
    assert_eq!(c.databases[0].spool_bytes_max, 2 << 30);
    assert_eq!(c.filesets[0].exclude, ["*.tmp", "*.swp"]);
    assert_eq!(c.serial.len(), 2);
    assert_eq!(c.serial[0].mode, SerialMode::Serve);
    assert_eq!(c.serial[1].mode, SerialMode::Connect);
    assert_eq!(
        c.serial[1].device_servers,
        ["192.168.1.50:4001", "192.168.1.51:4001"]
    );
}

#[test]
fn example_documents_every_option() {
    let sections: &[(&str, &[&str])] = &[
        ("[pair]", PAIR_KEYS),
        ("[timing]", TIMING_KEYS),
        ("[[node]]", NODE_KEYS),
        ("[tiebreaker]", TIEBREAKER_KEYS),
        ("[hooks]", HOOKS_KEYS),
        ("[control]", CONTROL_KEYS),
        ("[[database]]", DATABASE_KEYS),
        ("[[fileset]]", FILESET_KEYS),
        ("[[serial]]", SERIAL_KEYS),
    ];
    for (section, keys) in sections {
        let start = EXAMPLE
            .find(&format!("\n{section}\n"))
            .unwrap_or_else(|| panic!("{section} missing"));
        let body = &EXAMPLE[start + section.len() + 2..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        let body = if *section == "[[serial]]" {
            &EXAMPLE[start..]
        } else {
            body
        };
        for key in *keys {
            let set = body.lines().any(|l| l.starts_with(&format!("{key} = ")));
            let shown = body.lines().any(|l| l.starts_with(&format!("# {key} = ")));
            assert!(set || shown, "{section} {key} is not in the example");
        }
    }
}

#[test]
fn demo_config_parses() {
    let dir = Path::new("/tmp/tandem-demo");
    let c = parse(&demo_config(dir, 17480)).unwrap();
    assert_eq!(c.pair.name, "demo");
    assert_eq!(c.pair.failover, FailoverMode::Auto);
    assert_eq!(c.pair.key_file, dir.join("pair.key"));
    let (a, b) = (c.node("a").unwrap(), c.node("b").unwrap());
    assert_eq!(c.data_dir(a), dir.join("a"));
    assert_eq!(c.data_dir(b), dir.join("b"));
    assert_eq!(a.control.to_string(), "127.0.0.1:17480");
    assert_eq!(b.control.to_string(), "127.0.0.1:17481");
    assert_eq!(a.replication.port(), 17482);
    assert_eq!(b.replication.port(), 17483);
    let ports = |n: &Node| {
        n.heartbeat
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(a), ["udp://127.0.0.1:17484", "udp://127.0.0.1:17485"]);
    assert_eq!(ports(b), ["udp://127.0.0.1:17486", "udp://127.0.0.1:17487"]);
    assert_eq!(c.timing, Timing::default());
    assert_eq!(c.hooks, Hooks::default());
    assert_eq!(c.peer_of("a").unwrap().name, "b");
    assert_eq!(c.peer_of("b").unwrap().name, "a");
    assert!(c.peer_of("c").is_none());

    // Paths that need escaping in TOML survive.
    let odd = Path::new("/tmp/a \"quoted\" dir\\x");
    assert_eq!(parse(&demo_config(odd, 9000)).unwrap().pair.data_dir, odd);

    // Too high a base port is an error, not a panic.
    check_err(
        &demo_config(dir, 65530),
        expect![[r#"
            t.toml:19:14: heartbeat link "udp://127.0.0.1:65536": invalid port "65536"; expected "IP:PORT" with a port from 1 to 65535
            t.toml:19:39: heartbeat link "udp://127.0.0.1:65537": invalid port "65537"; expected "IP:PORT" with a port from 1 to 65535"#]],
    );
}

#[test]
fn demo_with_a_database_needs_path_prefixes() {
    let text = demo_config(Path::new("/tmp/d"), 9000)
        + "\n[[database]]\nname = \"x\"\npath = \"/srv/x.db\"\n";
    check_err(
        &text,
        expect!["t.toml:15:1: both nodes run on this one machine (the peer is reached on a loopback address) but have the same path_prefix, so their databases, file sets and ptys would be the same files; give each [[node]] its own path_prefix"],
    );
}

#[test]
fn syntax_errors() {
    check_err(
        "[pair]\nname = \n",
        expect![[r#"t.toml:2:8: TOML syntax error: invalid string: expected `"`, `'`"#]],
    );
    check_err(
        "[pair]\nname = \"a\"\nname = \"b\"\n",
        expect![[r#"t.toml:3:1: TOML syntax error: duplicate key `name` in table `pair`"#]],
    );
    check_err(
        "",
        expect![[r#"
        t.toml:1:1: missing required section [pair] (the pair's name, key_file and data_dir)
        t.toml:1:1: no [[node]] sections; a pair needs exactly two nodes"#]],
    );
}

#[test]
fn unknown_keys() {
    check_err(
        &variant(
            &[(
                "heartbeat = [\"udp://10.0.0.2",
                "hearbeat = [\"udp://10.0.0.2",
            )],
            "",
        ),
        expect![[r#"
            t.toml:11:1: missing required key "heartbeat" in [[node]]
            t.toml:14:1: unknown key "hearbeat" in [[node]]; did you mean "heartbeat"?"#]],
    );
    check_err(
        &variant(
            &[(
                "data_dir = \"/d\"",
                "data_dir = \"/d\"\nfailvoer = \"auto\"",
            )],
            "",
        ),
        expect![[r#"t.toml:5:1: unknown key "failvoer" in [pair]; did you mean "failover"?"#]],
    );
    check_err(
        &variant(&[], "[hooks]\ntimeout = 5\n"),
        expect![[r#"t.toml:16:1: unknown key "timeout" in [hooks]; did you mean "timeout_ms"?"#]],
    );
    check_err(
        &variant(&[], "[pair2]\n"),
        expect!["t.toml:15:2: unknown section [pair2]; did you mean [pair]?"],
    );
    check_err(
        &variant(&[], "[[databases]]\nname = \"x\"\n"),
        expect![[r#"t.toml:15:3: unknown section [[databases]]; did you mean [[database]]?"#]],
    );
    check_err(
        &variant(&[], "[zzz]\n"),
        expect!["t.toml:15:2: unknown section [zzz]; the sections are [pair], [timing], [[node]], [tiebreaker], [hooks], [control], [[database]], [[fileset]], [[serial]]"],
    );
    check_err(
        &format!("name = \"x\"\n{MIN}"),
        expect![[
            r#"t.toml:1:1: unknown key "name" at the top level; keys belong in a section such as [pair] or [[node]]"#
        ]],
    );
    check_err(
        &variant(&[], "[control]\nqqq = 1\n"),
        expect![[r#"t.toml:16:1: unknown key "qqq" in [control]; the keys are token_file"#]],
    );
}

#[test]
fn wrong_types() {
    check_err(
        &variant(&[], "[timing]\nlease_ms = \"1500\"\n"),
        expect![[
            r#"t.toml:16:12: "lease_ms" must be a whole number (milliseconds), found a string"#
        ]],
    );
    check_err(
        &variant(&[], "[timing]\nlease_ms = -1\n"),
        expect![[r#"t.toml:16:12: "lease_ms" must not be negative, found -1"#]],
    );
    check_err(
        &variant(&[("name = \"p\"", "name = 5")], ""),
        expect![[r#"t.toml:2:8: "name" must be a string, found an integer"#]],
    );
    check_err(
        &variant(
            &[("[\"udp://10.0.0.1:7482\"]", "[\"udp://10.0.0.1:7482\", 7]")],
            "",
        ),
        expect![[
            r#"t.toml:9:37: "heartbeat" must be an array of strings, found an integer in it"#
        ]],
    );
    check_err(
        &variant(
            &[("[\"udp://10.0.0.1:7482\"]", "\"udp://10.0.0.1:7482\"")],
            "",
        ),
        expect![[r#"t.toml:9:13: "heartbeat" must be an array of strings, found a string"#]],
    );
    check_err(
        &variant(&[], "[[pair]]\n"),
        expect!["t.toml:15:1: TOML syntax error: invalid table header: duplicate key `pair` in document root"],
    );
    check_err(
        &variant(&[("[pair]", "[[pair]]")], ""),
        expect!["t.toml:1:1: [pair] is a single table: write [pair], not [[pair]]"],
    );
    check_err(
        &variant(&[], "[database]\nname = \"x\"\n"),
        expect!["t.toml:15:1: there can be several [[database]] sections: write [[database]], not [database]"],
    );
    check_err(
        &variant(
            &[(
                "data_dir = \"/d\"",
                "data_dir = \"/d\"\nfailover = \"automatic\"",
            )],
            "",
        ),
        expect![[r#"t.toml:5:12: "failover" must be "auto" or "manual", found "automatic""#]],
    );
}

#[test]
fn missing_keys() {
    check_err(
        &variant(&[("replication = \"10.0.0.2:7481\"\n", "")], ""),
        expect![[r#"t.toml:11:1: missing required key "replication" in [[node]]"#]],
    );
    check_err(
        &variant(&[("key_file = \"/k\"\n", "")], ""),
        expect![[r#"t.toml:1:1: missing required key "key_file" in [pair]"#]],
    );
    check_err(
        &variant(&[], "[[database]]\nname = \"x\"\n"),
        expect![[r#"t.toml:15:1: missing required key "path" in [[database]]"#]],
    );
    check_err(
        &variant(&[], "[tiebreaker]\n"),
        expect![[r#"t.toml:15:1: missing required key "reach" in [tiebreaker]"#]],
    );
}

#[test]
fn inline_and_dotted_tables_are_accepted() {
    let text = MIN.replace(
        "[pair]\nname = \"p\"\nkey_file = \"/k\"\ndata_dir = \"/d\"\n",
        "pair = { name = \"p\", key_file = \"/k\", data_dir = \"/d\" }\ntiming.lease_ms = 1600\n",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.pair.name, "p");
    assert_eq!(c.timing.lease_ms, 1600);
    check_err(
        &text.replace("timing.lease_ms = 1600", "timing.lease_ms = 100"),
        expect![[
            r#"t.toml:2:19: "lease_ms" (100) must be more than twice "heartbeat_interval_ms" (100), so that one lost heartbeat does not cost the primary its lease"#
        ]],
    );
}

#[test]
fn node_count_and_names() {
    let one = MIN.split("\n[[node]]\nname = \"b\"").next().unwrap();
    check_err(
        one,
        expect![[r#"t.toml:6:1: only one [[node]]; a pair needs exactly two nodes"#]],
    );
    check_err(
        &format!("node = []\n{}", one.split("\n[[node]]").next().unwrap()),
        expect!["t.toml:1:8: no [[node]] sections; a pair needs exactly two nodes"],
    );
    check_err(
        &variant(&[], "\n[[node]]\nname = \"c\"\nreplication = \"10.0.0.3:7481\"\nheartbeat = [\"udp://10.0.0.3:7482\"]\n"),
        expect![[r#"t.toml:16:1: a third [[node]]; a pair has exactly two nodes"#]],
    );
    check_err(
        &variant(&[("name = \"b\"", "name = \"a\"")], ""),
        expect![[
            r#"t.toml:12:8: node name "a" is already used at line 7; the two nodes need distinct names"#
        ]],
    );
    check_err(
        &variant(&[("name = \"b\"", "name = \"b 2\"")], ""),
        expect![[
            r#"t.toml:12:8: the node name "b 2" contains ' '; use only letters A-Z a-z, digits, '_', '.' and '-'"#
        ]],
    );
    check_err(
        &variant(&[("name = \"p\"", "name = \"\"")], ""),
        expect![[r#"t.toml:2:8: the pair name must not be empty"#]],
    );
}

#[test]
fn paths_must_be_absolute() {
    check_err(
        &variant(&[("key_file = \"/k\"", "key_file = \"pair.key\"")], ""),
        expect![[r#"t.toml:3:12: "key_file" must be an absolute path, found "pair.key""#]],
    );
    check_err(
        &variant(&[], "[[fileset]]\nname = \"f\"\nroot = \"srv/f\"\n"),
        expect![[r#"t.toml:17:8: "root" must be an absolute path, found "srv/f""#]],
    );
    check_err(
        &variant(&[("name = \"b\"", "name = \"b\"\npath_prefix = \"x\"")], ""),
        expect![[r#"t.toml:13:15: "path_prefix" must be an absolute path, found "x""#]],
    );
}

#[test]
fn heartbeat_links() {
    check_err(
        &variant(&[("udp://10.0.0.2:7482", "tcp://10.0.0.2:7482")], ""),
        expect![[
            r#"t.toml:14:14: heartbeat link "tcp://10.0.0.2:7482" has unknown scheme "tcp"; expected "udp://IP:PORT" or "serial:///dev/PATH?baud=N""#
        ]],
    );
    check_err(
        &variant(&[("udp://10.0.0.2:7482", "udp://10.0.0.2")], ""),
        expect![[r#"t.toml:14:14: heartbeat link "udp://10.0.0.2": no port; expected "IP:PORT""#]],
    );
    check_err(
        &variant(
            &[("udp://10.0.0.2:7482", "serial:///dev/ttyS1?baud=fast")],
            "",
        ),
        expect![[
            r#"t.toml:14:14: heartbeat link "serial:///dev/ttyS1?baud=fast": baud must be a positive whole number, found "fast""#
        ]],
    );
    check_err(
        &variant(
            &[("heartbeat = [\"udp://10.0.0.2:7482\"]", "heartbeat = []")],
            "",
        ),
        expect![[
            r#"t.toml:14:13: "heartbeat" needs at least one link, e.g. ["udp://10.10.10.1:7482"]"#
        ]],
    );
    check_err(
        &variant(
            &[(
                "\"udp://10.0.0.2:7482\"]",
                "\"udp://10.0.0.2:7482\", \"udp://10.0.1.2:7482\"]",
            )],
            "",
        ),
        expect![[
            r#"t.toml:14:13: node "b" has 2 heartbeat link(s) but node "a" has 1; link i of one node pairs with link i of the other, so both lists need the same length and kinds"#
        ]],
    );
    check_err(
        &variant(
            &[("\"udp://10.0.0.2:7482\"]", "\"serial:///dev/ttyS0\"]")],
            "",
        ),
        expect![[
            r#"t.toml:14:14: heartbeat link 1 of node "b" is serial but link 1 of node "a" is udp; link i of one node pairs with link i of the other"#
        ]],
    );
    check_err(
        &variant(
            &[
                (
                    "\"udp://10.0.0.1:7482\"]",
                    "\"serial:///dev/ttyS0\", \"serial:///dev/ttyS0\"]",
                ),
                (
                    "\"udp://10.0.0.2:7482\"]",
                    "\"serial:///dev/ttyS0\", \"serial:///dev/ttyS1\"]",
                ),
            ],
            "",
        ),
        expect![[
            r#"t.toml:9:37: serial device "/dev/ttyS0" is used by two heartbeat links of node "a""#
        ]],
    );
}

#[test]
fn address_conflicts() {
    // The same specific address on both machines.
    check_err(
        &variant(
            &[(
                "replication = \"10.0.0.2:7481\"",
                "replication = \"10.0.0.1:7481\"",
            )],
            "",
        ),
        expect![[
            r#"t.toml:13:15: address 10.0.0.1:7481 (node "b" replication) is already used by node "a" replication at line 8"#
        ]],
    );
    // Twice on one node.
    check_err(
        &variant(&[("udp://10.0.0.1:7482", "udp://10.0.0.1:7481")], ""),
        expect![[
            r#"t.toml:9:14: address 10.0.0.1:7481 (node "a" heartbeat link 1) is already used by node "a" replication at line 8"#
        ]],
    );
    // 0.0.0.0 conflicts with every address on its port.
    check_err(
        &variant(
            &[("name = \"a\"", "name = \"a\"\ncontrol = \"0.0.0.0:7481\"")],
            "[control]\ntoken_file = \"/t\"\n",
        ),
        expect![[
            r#"t.toml:9:15: address 10.0.0.1:7481 (node "a" replication) conflicts with 0.0.0.0:7481 (node "a" control at line 8): an unspecified address takes the port on every address of the machine"#
        ]],
    );
    // A serial listener is bound on whichever node is primary.
    check_err(
        &variant(&[], "[[serial]]\nname = \"s\"\nmode = \"serve\"\ndevice = \"/dev/ttyUSB0\"\nlisten = \"0.0.0.0:7482\"\n"),
        expect![[r#"t.toml:19:10: address 0.0.0.0:7482 (serial port "s" listen) conflicts with 10.0.0.1:7482 (node "a" heartbeat link 1 at line 9): an unspecified address takes the port on every address of the machine"#]],
    );
    // The same loopback control port on two machines is fine ...
    assert!(parse(MIN).is_ok());
    // ... but not on one machine.
    let demo = demo_config(Path::new("/tmp/d"), 9000).replace("127.0.0.1:9001", "127.0.0.1:9000");
    check_err(
        &demo,
        expect![[
            r#"t.toml:17:11: address 127.0.0.1:9000 (node "b" control) is already used by node "a" control at line 10"#
        ]],
    );
    // Replication must be a specific address.
    check_err(
        &variant(&[("10.0.0.2:7481", "0.0.0.0:7481")], ""),
        expect![[
            r#"t.toml:13:15: "replication": the peer connects to this address, so it must be a specific IP, not 0.0.0.0"#
        ]],
    );
    check_err(
        &variant(&[("10.0.0.2:7481", "peer-b:7481")], ""),
        expect![[
            r#"t.toml:13:15: invalid "replication" address "peer-b:7481": "peer-b" is not an IP address (tandem does not resolve host names here); expected "IP:PORT""#
        ]],
    );
}

#[test]
fn one_machine_needs_separate_data_dirs() {
    let demo = demo_config(Path::new("/tmp/d"), 9000)
        .replace("data_dir = \"/tmp/d/b\"", "data_dir = \"/tmp/d/a\"");
    check_err(
        &demo,
        expect![[
            r#"t.toml:20:12: both nodes run on this one machine (the peer is reached on a loopback address) but share the data directory "/tmp/d/a"; give each [[node]] its own data_dir"#
        ]],
    );
}

#[test]
fn timing_checks() {
    check_err(
        &variant(&[], "[timing]\nheartbeat_interval_ms = 2\n"),
        expect![[
            r#"t.toml:16:25: "heartbeat_interval_ms" must be at least 5 (milliseconds), found 2"#
        ]],
    );
    check_err(
        &variant(&[], "[timing]\nlease_ms = 1900\n"),
        expect![[
            r#"t.toml:16:12: "dead_after_ms" (2000) must be at least "lease_ms" + "lease_margin_ms" (1900 + 250 = 2150), so that the standby never promotes while the primary may still hold its lease"#
        ]],
    );
    check_err(
        &variant(&[], "[timing]\nheartbeat_interval_ms = 500\n"),
        expect![[
            r#"t.toml:16:25: "link_dead_after_ms" (1000) must be at least 3 × "heartbeat_interval_ms" (3 × 500 = 1500), so that a link is not declared down for one or two lost frames"#
        ]],
    );
    check_err(
        &variant(&[], "[timing]\nswitchover_timeout_ms = 0\n"),
        expect![[r#"t.toml:16:25: "switchover_timeout_ms" must be greater than 0"#]],
    );
    check_err(
        &variant(&[], "[timing]\ndead_after_ms = 18446744073709551615\n"),
        expect!["t.toml:16:17: TOML syntax error: number too large to fit in target type"],
    );
    // Huge values do not overflow.
    let c = parse(&variant(
        &[],
        "[timing]\nlease_ms = 9223372036854775807\nlease_margin_ms = 9223372036854775807\n",
    ));
    assert!(c.is_err());
}

#[test]
fn hooks_and_control() {
    check_err(
        &variant(&[], "[hooks]\ntimeout_ms = 0\n"),
        expect![[r#"t.toml:16:14: "timeout_ms" must be greater than 0"#]],
    );
    check_err(
        &variant(&[], "[hooks]\non_promote = [\"/x up\", \"\"]\n"),
        expect![[r#"t.toml:16:24: "on_promote" must not contain empty strings"#]],
    );
    check_err(
        &variant(
            &[("name = \"b\"", "name = \"b\"\ncontrol = \"10.0.0.2:7480\"")],
            "",
        ),
        expect![[
            r#"t.toml:13:11: control address 10.0.0.2:7480 of node "b" is not loopback, so [control] token_file is required (the control API can switch roles)"#
        ]],
    );
    let ok = variant(
        &[("name = \"b\"", "name = \"b\"\ncontrol = \"10.0.0.2:7480\"")],
        "[control]\ntoken_file = \"/etc/t\"\n",
    );
    assert_eq!(
        parse(&ok).unwrap().control.token_file.unwrap(),
        Path::new("/etc/t")
    );
}

#[test]
fn tiebreaker() {
    check_err(
        &variant(&[], "[tiebreaker]\nreach = [\"192.168.1.1\"]\n"),
        expect![[
            r#"t.toml:16:10: tiebreaker target "192.168.1.1" has no port; expected "HOST:PORT" (a TCP connect that succeeds or is refused counts as reachable)"#
        ]],
    );
    check_err(
        &variant(&[], "[tiebreaker]\nreach = []\n"),
        expect![[r#"t.toml:16:9: "reach" needs at least one "HOST:PORT" target"#]],
    );
    let c = parse(&variant(
        &[],
        "[tiebreaker]\nreach = [\"gw:53\"]\ntimeout_ms = 300\n",
    ))
    .unwrap();
    assert_eq!(
        c.tiebreaker,
        Some(Tiebreaker {
            reach: vec!["gw:53".into()],
            timeout_ms: 300
        })
    );
}

#[test]
fn databases_and_filesets() {
    let db = "[[database]]\nname = \"x\"\npath = \"/x.db\"\nwal_bytes_max = \"512KiB\"\nspool_bytes_max = 4096\n";
    let c = parse(&variant(&[], db)).unwrap();
    assert_eq!(c.databases[0].wal_bytes_max, 512 << 10);
    assert_eq!(c.databases[0].spool_bytes_max, 4096);
    check_err(
        &variant(&[], &db.replace("\"512KiB\"", "\"512 kibibytes\"")),
        expect![[
            r#"t.toml:18:17: "wal_bytes_max": invalid size "512 kibibytes": unknown unit "kibibytes"; expected a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "64MiB""#
        ]],
    );
    check_err(
        &variant(&[], &db.replace("4096", "0")),
        expect![[r#"t.toml:19:19: "spool_bytes_max" must be greater than 0"#]],
    );
    check_err(
        &variant(&[], &db.replace("4096", "1.5")),
        expect![[
            r#"t.toml:19:19: "spool_bytes_max" must be a size (a whole number of bytes, or a string like "64MiB"), found a float"#
        ]],
    );
    check_err(
        &variant(&[], &format!("{db}{}", db.replace("/x.db", "/y.db"))),
        expect![[r#"t.toml:21:8: database name "x" is already used at line 16"#]],
    );
    check_err(
        &variant(&[], &format!("{db}{}", db.replace("\"x\"", "\"y\""))),
        expect![[r#"t.toml:22:8: database path "/x.db" is already used at line 17"#]],
    );
    let fs = "[[fileset]]\nname = \"f\"\nroot = \"/f\"\n";
    check_err(
        &variant(&[], &format!("{fs}{fs}")),
        expect![[r#"
            t.toml:19:8: file set name "f" is already used at line 16
            t.toml:20:8: file set root "/f" is already used at line 17"#]],
    );
    // Arrays of inline tables work too.
    let text =
        format!("fileset = [{{ name = \"f\", root = \"/f\", include = [\"*.conf\"] }}]\n{MIN}");
    let c = parse(&text).unwrap();
    assert_eq!(c.filesets[0].include, ["*.conf"]);
    assert_eq!(c.filesets[0].reconcile_ms, DEFAULT_RECONCILE_MS);
    // Globs and the reconcile period are checked where they are written.
    check_err(
        &variant(
            &[],
            &format!("{fs}include = [\"a/**\", \"b[\"]\nreconcile_ms = 5\n"),
        ),
        expect![[r#"
            t.toml:18:20: "include": "b[" is not a valid glob: unclosed character class; missing ']'
            t.toml:19:16: "reconcile_ms" must be at least 100 (milliseconds), found 5"#]],
    );
    // A root inside another root.
    check_err(
        &variant(
            &[],
            &format!(
                "{fs}{}",
                fs.replace("\"f\"", "\"g\"").replace("/f", "/f/sub")
            ),
        ),
        expect![[
            r#"t.toml:20:8: file set root "/f/sub" is inside the root of file set "f" (line 17)"#
        ]],
    );
    let c = parse(&variant(&[], &format!("{fs}reconcile_ms = 750\n"))).unwrap();
    assert_eq!(c.filesets[0].reconcile_ms, 750);
}

#[test]
fn serial_ports() {
    let serve = "[[serial]]\nname = \"g\"\nmode = \"serve\"\ndevice = \"/dev/ttyUSB0\"\nlisten = \"0.0.0.0:4001\"\n";
    let c = parse(&variant(&[], serve)).unwrap();
    assert_eq!(c.serial[0].protocol, SerialProtocol::Raw);
    assert_eq!(c.serial[0].active, SerialActive::Primary);
    check_err(
        &variant(&[], &serve.replace("listen = \"0.0.0.0:4001\"\n", "")),
        expect![[
            r#"t.toml:15:1: serial port "g" in serve mode needs "listen" (the TCP address clients connect to)"#
        ]],
    );
    check_err(
        &variant(
            &[],
            &serve.replace("device = \"/dev/ttyUSB0\"\n", "pty = \"/dev/p\"\n"),
        ),
        expect![[r#"
            t.toml:15:1: serial port "g" in serve mode needs "device" (the local serial device)
            t.toml:18:7: "pty" is for connect mode, but serial port "g" is in serve mode"#]],
    );
    check_err(
        &variant(&[], &serve.replace("serve", "listen")),
        expect![[r#"t.toml:17:8: "mode" must be "serve" or "connect", found "listen""#]],
    );
    check_err(
        &variant(&[], &format!("{serve}{}", serve.replace("4001", "4002"))),
        expect![[r#"
            t.toml:21:8: serial port name "g" is already used at line 16
            t.toml:23:10: serial device "/dev/ttyUSB0" is already used at line 18"#]],
    );
    check_err(
        &variant(
            &[
                ("\"udp://10.0.0.1:7482\"]", "\"serial:///dev/ttyUSB0\"]"),
                ("\"udp://10.0.0.2:7482\"]", "\"serial:///dev/ttyS0\"]"),
            ],
            serve,
        ),
        expect![[
            r#"t.toml:18:10: serial device "/dev/ttyUSB0" is also heartbeat link 1 of node "a""#
        ]],
    );

    let connect = "[[serial]]\nname = \"r\"\nmode = \"connect\"\ndevice_servers = [\"rfc2217://10.1.1.1:4001\"]\npty = \"/dev/r\"\nprotocol = \"rfc2217\"\n";
    let c = parse(&variant(&[], connect)).unwrap();
    assert_eq!(c.serial[0].device_servers, ["10.1.1.1:4001"]);
    check_err(
        &variant(&[], &connect.replace("protocol = \"rfc2217\"\n", "")),
        expect![[
            r#"t.toml:18:19: device server "rfc2217://10.1.1.1:4001" says rfc2217 but this port's protocol is "raw" (the default); set protocol = "rfc2217" or drop the prefix"#
        ]],
    );
    check_err(
        &variant(
            &[],
            &connect.replace(
                "[\"rfc2217://10.1.1.1:4001\"]",
                "[\"a:1\", \"b:2\", \"c:3\"]",
            ),
        ),
        expect![[r#"t.toml:18:33: serial port "r" has more than two device servers"#]],
    );
    check_err(
        &variant(
            &[],
            &connect
                .replace("[\"rfc2217://10.1.1.1:4001\"]", "[]")
                .replace("pty = \"/dev/r\"\n", ""),
        ),
        expect![[r#"
            t.toml:15:1: serial port "r" in connect mode needs "pty" (or "listen": how the port is presented on the primary)
            t.toml:18:18: serial port "r" in connect mode needs one or two "device_servers" ("HOST:PORT")"#]],
    );
    check_err(
        &variant(
            &[],
            &connect.replace("rfc2217://10.1.1.1:4001", "telnet://10.1.1.1"),
        ),
        expect![[
            r#"t.toml:18:19: device server "telnet://10.1.1.1" has unknown scheme "telnet"; expected "HOST:PORT", "rfc2217://HOST:PORT" or "raw://HOST:PORT""#
        ]],
    );
    // On one machine, an "always" listener would be bound twice.
    let demo = demo_config(Path::new("/tmp/d"), 9000)
        + &serve.replace("0.0.0.0", "127.0.0.1")
        + "active = \"always\"\n";
    check_err(
        &demo,
        expect![[
            r#"t.toml:25:10: serial port "g" listens on 127.0.0.1:4001 with active = "always", but both nodes run on this one machine and would both bind it; use active = "primary""#
        ]],
    );
}

#[test]
fn errors_come_in_file_order() {
    let text = variant(
        &[
            ("key_file = \"/k\"", "key_file = \"k\""),
            ("name = \"b\"", "name = \"b\"\nbogus = 1"),
        ],
        "[timing]\nlease_ms = 10\n",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.diagnostics().len(), 2, "{e}");
    expect![[r#"
        t.toml:3:12: "key_file" must be an absolute path, found "k"
        t.toml:13:1: unknown key "bogus" in [[node]]; the keys are name, control, replication, heartbeat, data_dir, path_prefix"#]]
    .assert_eq(&e.to_string());
}

#[test]
fn columns_count_characters() {
    check_err(
        &variant(&[("name = \"a\"", "name = \"a\" # é€\nreplicaton = 1")], ""),
        expect![[
            r#"t.toml:8:1: unknown key "replicaton" in [[node]]; did you mean "replication"?"#
        ]],
    );
    check_err(
        &variant(&[("name = \"p\"", "name = \"é€x\" ; ")], ""),
        expect!["t.toml:2:14: TOML syntax error: expected newline, `#`"],
    );
}

#[test]
fn pick_node() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.pick_node(Some("b"), "whatever").unwrap().name, "b");
    assert_eq!(c.pick_node(None, "a").unwrap().name, "a");
    assert_eq!(c.pick_node(None, "b.example.net").unwrap().name, "b");
    expect![[r#"t.toml: no node named "c"; the nodes are "a" and "b""#]]
        .assert_eq(&c.pick_node(Some("c"), "a").unwrap_err().to_string());
    expect![[r#"t.toml: this machine's host name "web1" matches no node; the nodes are "a" and "b": name this machine's node explicitly"#]]
        .assert_eq(&c.pick_node(None, "web1").unwrap_err().to_string());
}

#[test]
fn load_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, demo_config(dir.path(), 7000)).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.source, path);
    let missing = dir.path().join("nope.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );
    std::fs::write(&path, "[pair]\nname = 1\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("\n{}:2:8: ", path.display())),
        "{e}"
    );
}

#[test]
fn node_paths() {
    let mut c = parse(MIN).unwrap();
    c.nodes[0].path_prefix = Some("/tmp/a".into());
    c.nodes[0].data_dir = Some("/tmp/a/state".into());
    assert_eq!(
        c.nodes[0].prefixed(Path::new("/srv/x.db")),
        Path::new("/tmp/a/srv/x.db")
    );
    assert_eq!(
        c.nodes[1].prefixed(Path::new("/srv/x.db")),
        Path::new("/srv/x.db")
    );
    assert_eq!(c.data_dir(&c.nodes[0]), Path::new("/tmp/a/state"));
    assert_eq!(c.nodes[1].data_dir(&c.pair), Path::new("/d"));
}

#[test]
fn never_panics_on_truncations_or_garbage() {
    // Every cut before node b's heartbeat list is complete lacks something.
    let complete = EXAMPLE.find("192.168.1.12:7482").unwrap();
    for text in [EXAMPLE, MIN] {
        let mut cut = 0;
        while cut < text.len() {
            let end = (0..=cut)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let result = parse(&text[..end]);
            if text == EXAMPLE && end < complete {
                assert!(result.is_err(), "cut at {end} parsed");
            }
            // Also the remainder alone, and a byte-shifted splice.
            let _ = parse(&text[end..]);
            cut += 7;
        }
    }
    // Deterministic pseudo-random garbage drawn from TOML-ish characters.
    let alphabet: Vec<char> = "[]{}=\"',.#\n \t:/?0123456789abcnodeprtuwé\\-_"
        .chars()
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        let len = (state % 64) as usize;
        let mut s = String::new();
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        let _ = parse(&s);
        let _ = parse(&format!("{MIN}{s}"));
    }
}

#[test]
fn serial_port_options() {
    let serve = "[[serial]]\nname = \"g\"\nmode = \"serve\"\ndevice = \"/dev/ttyUSB0\"\nlisten = \"0.0.0.0:4001\"\n";
    let c = parse(&variant(&[], serve)).unwrap();
    let s = &c.serial[0];
    assert_eq!(s.client_policy, SerialClientPolicy::KickOld);
    assert!(s.allow.is_empty());
    assert_eq!(s.idle_timeout_ms, 0);
    assert_eq!(s.trace_file, None);
    assert_eq!(s.keepalive_idle_ms, DEFAULT_SERIAL_KEEPALIVE_IDLE_MS);
    assert_eq!(s.user_timeout_ms, DEFAULT_SERIAL_USER_TIMEOUT_MS);
    assert_eq!(s.line, SerialLine::default());
    assert_eq!(s.health_interval_ms, DEFAULT_SERIAL_HEALTH_INTERVAL_MS);
    assert_eq!(s.failback_hold_ms, DEFAULT_SERIAL_FAILBACK_HOLD_MS);

    let full = format!(
        "{serve}client_policy = \"refuse_new\"\nallow = [\"10.0.0.9\", \"fd00::1\"]\nidle_timeout_ms = 60000\n\
         trace_file = \"/var/log/g.trace\"\nkeepalive_idle_ms = 2000\nuser_timeout_ms = 4000\n\
         baud = 115200\ndata_bits = 7\nparity = \"even\"\nstop_bits = 2\nflow = \"rtscts\"\n"
    );
    let c = parse(&variant(&[], &full)).unwrap();
    let s = &c.serial[0];
    assert_eq!(s.client_policy, SerialClientPolicy::RefuseNew);
    assert_eq!(
        s.allow,
        vec![
            "10.0.0.9".parse::<std::net::IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(s.idle_timeout_ms, 60_000);
    assert_eq!(s.trace_file.as_deref(), Some(Path::new("/var/log/g.trace")));
    assert_eq!((s.keepalive_idle_ms, s.user_timeout_ms), (2000, 4000));
    assert_eq!(
        s.line,
        SerialLine {
            baud: 115200,
            data_bits: 7,
            parity: SerialParity::Even,
            stop_bits: 2,
            flow: SerialFlow::RtsCts
        }
    );

    check_err(
        &variant(
            &[],
            &format!(
                "{serve}client_policy = \"kick\"\nallow = [\"10.0.0\"]\ntrace_file = \"g.trace\"\n\
                 keepalive_idle_ms = 500\nuser_timeout_ms = 0\nbaud = 0\ndata_bits = 9\n\
                 parity = \"e\"\nstop_bits = 3\nflow = \"hw\"\n"
            ),
        ),
        expect![[r#"
            t.toml:20:17: "client_policy" must be "kick_old" or "refuse_new", found "kick"
            t.toml:21:10: "allow" entry "10.0.0" is not an IP address (write one address per entry, e.g. "10.0.0.5" or "fd00::5")
            t.toml:22:14: "trace_file" must be an absolute path, found "g.trace"
            t.toml:23:21: "keepalive_idle_ms" must be between 1000 and 32767000 (the kernel counts it in whole seconds), found 500
            t.toml:24:19: "user_timeout_ms" must be greater than 0
            t.toml:25:8: "baud" must be greater than 0
            t.toml:26:13: "data_bits" must be 5, 6, 7 or 8, found 9
            t.toml:27:10: "parity" must be "none" or "even" or "odd" or "mark" or "space", found "e"
            t.toml:28:13: "stop_bits" must be 1 or 2, found 3
            t.toml:29:8: "flow" must be "none" or "rtscts" or "xonxoff", found "hw""#]],
    );

    let connect = "[[serial]]\nname = \"r\"\nmode = \"connect\"\ndevice_servers = [\"10.1.1.1:4001\", \"10.1.1.2:4001\"]\npty = \"/dev/r\"\nprotocol = \"rfc2217\"\n";
    let c = parse(&variant(
        &[],
        &format!("{connect}health_interval_ms = 200\nfailback_hold_ms = 0\n"),
    ))
    .unwrap();
    assert_eq!(
        (c.serial[0].health_interval_ms, c.serial[0].failback_hold_ms),
        (200, 0)
    );
    check_err(
        &variant(&[], &format!("{connect}health_interval_ms = 0\n")),
        expect![[r#"t.toml:21:22: "health_interval_ms" must be greater than 0"#]],
    );
    check_err(
        &variant(
            &[],
            &format!("{connect}allow = [\"10.0.0.1\"]\nidle_timeout_ms = 5\n"),
        ),
        expect![[r#"
            t.toml:21:9: "allow" applies to TCP clients, but serial port "r" has no "listen"
            t.toml:22:19: "idle_timeout_ms" applies to TCP clients, but serial port "r" has no "listen""#]],
    );
    check_err(
        &variant(&[], &format!("{serve}health_interval_ms = 100\n")),
        expect![[
            r#"t.toml:20:22: "health_interval_ms" is for connect mode, but serial port "g" is in serve mode"#
        ]],
    );
}
