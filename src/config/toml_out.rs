//! `--print-config`: the effective configuration as TOML that loads back unchanged.

use super::*;

impl Config {
    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        format!(
            "[http]\nlisten = \"{}\"\nheader_timeout_ms = {}\nidle_timeout_ms = {}\nmax_connections = {}\n\
             max_sessions_per_ip = {}\nrate_limit = {}\nrate_burst = {}\nlimit_exempt = {}\n{}\n[media]\nbind_ip = \"{}\"\nannounced_ip = [{}]\nports = \"{}\"\n\
             # 0: each session its own port from `ports`; else every session on this one port\n\
             mux_port = {}\n\
             # true: ICE-TCP media also on the HTTP(S) listener's port (its TCP candidate there)\n\
             tcp_on_http = {}\nprotocol = \"{}\"\n\
             udp_recv_buffer = {}\nudp_send_buffer = {}\ntcp_recv_buffer = {}\ntcp_send_buffer = {}\n\
             tcp_send_queue = {}\nice_timeout = {}\ngso = {}\ngso_hold_us = {}\nmax_publish_kbps = {}\n\n[workers]\ncount = {}\npin = {}\nbackend = \"{}\"\n",
            self.http.listen,
            self.http.header_timeout.as_millis(),
            self.http.idle_timeout.as_millis(),
            self.http.max_connections,
            self.http.max_sessions_per_ip,
            self.http.rate_limit,
            self.http.rate_burst,
            self.http.limit_exempt,
            self.front_door_http_toml(),
            self.media.bind_ip,
            self.media
                .announced_ip
                .iter()
                .map(|ip| format!("\"{ip}\""))
                .collect::<Vec<_>>()
                .join(", "),
            self.media.ports,
            self.media.mux_port.unwrap_or(0),
            self.media.tcp_on_http,
            self.media.protocol,
            self.media.udp_recv_buffer,
            self.media.udp_send_buffer,
            self.media.tcp_recv_buffer,
            self.media.tcp_send_buffer,
            self.media.tcp_send_queue,
            self.media.ice_timeout.as_secs(),
            self.media.gso,
            self.media.gso_hold.as_micros(),
            self.media.max_publish_kbps,
            self.workers.count,
            self.workers.pin,
            self.workers.backend,
        ) + &format!(
            "\n[cascade]\norigin = \"{}\"\n",
            self.cascade.origin.as_deref().unwrap_or("")
        ) + &self.front_door_toml()
            + &self.cluster_toml()
            + &self.admission_toml()
    }

    /// The `[http]` keys of TLS and tokens, as `--print-config` writes them.
    fn front_door_http_toml(&self) -> String {
        let http = &self.http;
        let redirect = http
            .redirect_listen
            .map_or(String::new(), |a| a.to_string());
        format!(
            "{}redirect_listen = \"{redirect}\"\nmax_sessions_per_token = {}\n",
            http.tls.to_toml(),
            http.max_sessions_per_token
        )
    }

    /// The rest of `[cascade]` and `[auth]`; tokens and secrets are not printed.
    fn front_door_toml(&self) -> String {
        let cascade = &self.cascade;
        let token = if cascade.token.is_some() {
            "# token set (not shown)\n"
        } else {
            ""
        };
        format!(
            "ca_file = \"{}\"\ninsecure = {}\n{token}{}",
            cascade.ca_file.as_deref().unwrap_or(""),
            cascade.insecure,
            self.auth.to_toml()
        )
    }
}
