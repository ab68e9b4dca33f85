//! Loading, overriding, printing and refusing configurations.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_loopback_and_ready() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c, Config::default());
    assert!(c.media.announced_ip[0].is_loopback());
    assert_eq!(c.media.mux_port, None);
    assert!(c.http.listen.ip().is_loopback());
}

#[test]
fn environment_overrides_file() {
    let file = "[media]\nports = \"40000-40010\"\nudp_recv_buffer = 65536\n[workers]\ncount = 3\n";
    let c = Config::load(
        Some(file),
        env(&[
            ("CORECAST_MEDIA_PORTS", "31000-31001"),
            ("CORECAST_WORKERS_PIN", "false"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.media.ports,
        PortRange {
            first: 31000,
            last: 31001
        }
    );
    assert_eq!(c.media.udp_recv_buffer, 65536);
    assert_eq!(c.workers.count, 3);
    assert!(!c.workers.pin);
}

#[test]
fn printed_config_loads_back_unchanged() {
    let mut c = Config::default();
    c.workers.count = 2;
    c.workers.backend = crate::io::BackendSetting::Epoll;
    c.media.protocol = MediaProtocol::Tcp;
    c.media.tcp_send_queue = 64;
    c.cascade.origin = Some("http://127.0.0.1:9000".into());
    c.media.ports = PortRange {
        first: 2000,
        last: 2001,
    };
    c.http.header_timeout = Duration::from_millis(2500);
    c.http.idle_timeout = Duration::from_secs(7);
    c.http.max_connections = 50;
    c.http.max_sessions_per_ip = 0;
    c.http.rate_limit = 3;
    c.http.rate_burst = 9;
    c.http.limit_exempt = AddressList(vec![
        Cidr::parse("10.0.0.0/8").unwrap(),
        Cidr::parse("2001:db8::/32").unwrap(),
    ]);
    assert_eq!(Config::load(Some(&c.to_toml()), env(&[])).unwrap(), c);
    c.http.limit_exempt = AddressList::default();
    assert_eq!(Config::load(Some(&c.to_toml()), env(&[])).unwrap(), c);
}

#[test]
fn http_limits_load_from_the_environment_and_refuse_nonsense() {
    let c = Config::load(
        None,
        env(&[
            ("CORECAST_HTTP_LIMIT_EXEMPT", "127.0.0.1, 10.1.0.0/16"),
            ("CORECAST_HTTP_HEADER_TIMEOUT_MS", "1500"),
            ("CORECAST_HTTP_RATE_LIMIT", "0"),
        ]),
    )
    .unwrap();
    assert!(c.http.limit_exempt.contains("10.1.2.3".parse().unwrap()));
    assert!(!c.http.limit_exempt.contains("127.0.0.2".parse().unwrap()));
    assert_eq!(c.http.header_timeout, Duration::from_millis(1500));
    assert_eq!(c.http.rate_limit, 0);
    let none = Config::load(None, env(&[("CORECAST_HTTP_LIMIT_EXEMPT", "")])).unwrap();
    assert_eq!(none.http.limit_exempt, AddressList::default());

    let err =
        Config::load(Some("[http]\nlimit_exempt = [\"10.0.0.0/40\"]\n"), env(&[])).unwrap_err();
    assert!(
        err.0.contains("http.limit_exempt") && err.0.contains("0 to 32"),
        "{err}"
    );
    let err = Config::load(None, env(&[("CORECAST_HTTP_MAX_CONNECTIONS", "0")])).unwrap_err();
    assert!(err.0.contains("http.max_connections"), "{err}");
    let err = Config::load(None, env(&[("CORECAST_HTTP_IDLE_TIMEOUT_MS", "5")])).unwrap_err();
    assert!(
        err.0.contains("http.idle_timeout_ms") && err.0.contains("100 to"),
        "{err}"
    );
    let err = Config::load(None, env(&[("CORECAST_HTTP_RATE_BURST", "0")])).unwrap_err();
    assert!(err.0.contains("http.rate_burst"), "{err}");
}

#[test]
fn bad_values_name_key_value_and_what_is_allowed() {
    let err = Config::load(None, env(&[("CORECAST_MEDIA_PORTS", "5000-4000")])).unwrap_err();
    assert!(
        err.0.contains("media.ports")
            && err.0.contains("5000-4000")
            && err.0.contains("FROM <= TO"),
        "{err}"
    );
    let err = Config::load(None, env(&[("CORECAST_MEDIA_PORTS", "80-90")])).unwrap_err();
    assert!(err.0.contains("1024"), "{err}");
    let err = Config::load(Some("[media]\nudp_send_buffer = 10\n"), env(&[])).unwrap_err();
    assert!(
        err.0.contains("media.udp_send_buffer") && err.0.contains("`10`"),
        "{err}"
    );
    let err = Config::load(None, env(&[("CORECAST_HTTP_LISTEN", "nowhere")])).unwrap_err();
    assert!(
        err.0.contains("http.listen") && err.0.contains("nowhere"),
        "{err}"
    );
    let err = Config::load(None, env(&[("CORECAST_MEDIA_PROTOCOL", "sctp")])).unwrap_err();
    assert!(
        err.0.contains("media.protocol") && err.0.contains("\"udp\", \"tcp\" or \"all\""),
        "{err}"
    );
    let err = Config::load(None, env(&[("CORECAST_WORKERS_PIN", "sometimes")])).unwrap_err();
    assert!(err.0.contains("workers.pin"), "{err}");
    let err = Config::load(None, env(&[("CORECAST_WORKERS_BACKEND", "kqueue")])).unwrap_err();
    assert!(
        err.0.contains("workers.backend") && err.0.contains("\"io_uring\" or \"epoll\""),
        "{err}"
    );
}

#[test]
fn front_door_keys_load_from_file_and_environment() {
    let file = "[http]\ntls = \"self-signed\"\nredirect_listen = \"127.0.0.1:8081\"\n\
                max_sessions_per_token = 3\n[cascade]\norigin = \"https://10.0.0.5:8443\"\n\
                insecure = true\n[[auth.tokens]]\ntoken = \"a-long-enough-token\"\n\
                allow = [\"play\"]\n";
    let c = Config::load(
        Some(file),
        env(&[
            (
                "CORECAST_AUTH_JWT_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            ("CORECAST_AUTH_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            ("CORECAST_AUTH_WEBHOOK_TIMEOUT_MS", "500"),
            ("CORECAST_CASCADE_TOKEN", "edge-token"),
        ]),
    )
    .unwrap();
    assert_eq!(c.http.tls, TlsSetting::SelfSigned);
    assert_eq!(c.http.max_sessions_per_token, 3);
    assert_eq!(c.auth.tokens.len(), 1);
    assert!(c.auth.jwt.is_some() && c.auth.enabled());
    assert_eq!(c.auth.webhook.as_ref().unwrap().timeout.as_millis(), 500);
    assert_eq!(c.cascade.token, Some(Secret("edge-token".into())));
    assert!(c.self_url().starts_with("https://"));
    // Secrets stay out of the printed configuration, which still loads.
    let printed = c.to_toml();
    assert!(!printed.contains("a-long-enough-token") && !printed.contains("edge-token"));
    assert!(!printed.contains("0123456789abcdef"), "{printed}");
    assert!(Config::load(Some(&printed), env(&[])).is_ok(), "{printed}");

    let err = Config::load(
        None,
        env(&[("CORECAST_HTTP_REDIRECT_LISTEN", "0.0.0.0:80")]),
    )
    .unwrap_err();
    assert!(err.0.contains("needs http.tls"), "{err}");
    let err = Config::load(None, env(&[("CORECAST_AUTH_TOKENS", "x")])).unwrap_err();
    assert!(err.0.contains("[[auth.tokens]]"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    let err = Config::load(None, env(&[("CORECAST_MEDIA_PORT", "1")])).unwrap_err();
    assert!(err.0.contains("CORECAST_MEDIA_PORT"), "{err}");
    let err = Config::load(Some("[media]\nport = 1\n"), env(&[])).unwrap_err();
    assert!(err.0.contains("media.port"), "{err}");
}

#[test]
fn port_range_must_cover_the_workers() {
    let mut c = Config::default();
    c.media.ports = PortRange {
        first: 5000,
        last: 5000,
    };
    assert!(c.validate_for_workers(1).is_ok());
    let err = c.validate_for_workers(2).unwrap_err();
    assert!(
        err.0.contains("media.ports") && err.0.contains("2 workers"),
        "{err}"
    );
}

#[test]
fn tcp_on_http_loads_from_file_and_environment_prints_and_refuses_non_booleans() {
    assert!(!Config::default().media.tcp_on_http);
    let c = Config::load(Some("[media]\ntcp_on_http = true\n"), env(&[])).unwrap();
    assert!(c.media.tcp_on_http);
    assert!(c.to_toml().contains("tcp_on_http = true"));
    assert_eq!(Config::load(Some(&c.to_toml()), env(&[])).unwrap(), c);
    let from_env = Config::load(None, env(&[("CORECAST_MEDIA_TCP_ON_HTTP", "true")])).unwrap();
    assert!(from_env.media.tcp_on_http);
    let e = Config::load(Some("[media]\ntcp_on_http = \"yes\"\n"), env(&[])).unwrap_err();
    assert!(e.to_string().contains("media.tcp_on_http"), "{e}");
}

#[test]
fn single_port_mode_and_announced_addresses_load_print_and_refuse() {
    let file = "[media]\nmux_port = 8189\nannounced_ip = [\"127.0.0.1\", \"::1\"]\n";
    let c = Config::load(Some(file), env(&[])).unwrap();
    assert_eq!(c.media.mux_port, Some(8189));
    let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    assert_eq!(c.media.announced_ip, ips);
    // Both modes print, and load back unchanged.
    assert!(c.to_toml().contains("mux_port = 8189"));
    assert_eq!(Config::load(Some(&c.to_toml()), env(&[])).unwrap(), c);
    let per_session = Config::default();
    assert!(per_session.to_toml().contains("mux_port = 0"));
    assert_eq!(
        Config::load(Some(&per_session.to_toml()), env(&[])).unwrap(),
        per_session
    );
    // A single string stays valid; the environment takes a comma-separated list.
    let single = Config::load(Some("[media]\nannounced_ip = \"203.0.113.7\"\n"), env(&[])).unwrap();
    assert_eq!(
        single.media.announced_ip,
        vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
    );
    let from_env = Config::load(
        None,
        env(&[
            ("CORECAST_MEDIA_ANNOUNCED_IP", "203.0.113.7, 2001:db8::7"),
            ("CORECAST_MEDIA_MUX_PORT", "8189"),
        ]),
    )
    .unwrap();
    assert_eq!(from_env.media.announced_ip.len(), 2);
    assert_eq!(from_env.media.mux_port, Some(8189));
    // A single port serves any number of workers, whatever the range holds.
    let mut few_ports = from_env.clone();
    few_ports.media.ports = PortRange {
        first: 2000,
        last: 2000,
    };
    assert!(few_ports.validate_for_workers(4).is_ok());
    for (bad_file, names) in [
        ("[media]\nmux_port = 80\n", "media.mux_port"),
        ("[media]\nmux_port = 70000\n", "media.mux_port"),
        ("[media]\nannounced_ip = []\n", "media.announced_ip"),
        (
            "[media]\nannounced_ip = [\"0.0.0.0\"]\n",
            "media.announced_ip",
        ),
        (
            "[media]\nannounced_ip = [\"nowhere\"]\n",
            "media.announced_ip",
        ),
    ] {
        let err = Config::load(Some(bad_file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(names), "{bad_file}: {err}");
    }
}
