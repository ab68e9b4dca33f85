//! Single-port mode's session table never panics and never routes a packet to a session that
//! did not register its ufrag or latch its tuple, whatever arrives on the shared port and in
//! whatever order sessions come and go.
#![no_main]

use std::net::SocketAddr;

use corecast::session::mux_table::{FiveTuple, MuxTable, Route, Transport};
use libfuzzer_sys::fuzz_target;

fn tuple(byte: u8) -> FiveTuple {
    FiveTuple {
        transport: if byte & 1 == 0 { Transport::Udp } else { Transport::Tcp },
        remote: SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(byte >> 1))),
        local: SocketAddr::from(([127, 0, 0, 1], 8189)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut table = MuxTable::<u8>::default();
    // Sessions 0..4 register ufrags "u0".."u3"; the input then drives operations and packets.
    let mut registered = [false; 4];
    let mut latched = std::collections::HashMap::new();
    let mut input = data;
    while let [op, arg, rest @ ..] = input {
        input = rest;
        let session = arg % 4;
        match op % 6 {
            0 => registered[session as usize] = table.register(format!("u{session}").as_bytes(), session).is_ok(),
            1 => {
                table.forget(format!("u{session}").as_bytes());
                registered[session as usize] = false;
            }
            2 => {
                table.latch(tuple(*arg), session);
                latched.insert(tuple(*arg), session);
            }
            3 => {
                table.release(&tuple(*arg));
                latched.remove(&tuple(*arg));
            }
            4 => {
                table.forget_session(session);
                registered[session as usize] = false;
                latched.retain(|_, s| *s != session);
            }
            _ => {
                let len = usize::from(*arg).min(input.len());
                let (packet, rest) = input.split_at(len);
                input = rest;
                match table.route(&tuple(*arg), packet) {
                    Route::Check(s) => assert!(registered[s as usize], "unregistered session {s}"),
                    // The table may have let an old tuple go (its bound), never invented one.
                    Route::Latched(s) => assert_eq!(latched.get(&tuple(*arg)), Some(&s)),
                    Route::Drop(_) => {}
                }
            }
        }
    }
});
