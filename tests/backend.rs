//! Start-up where the kernel refuses io_uring, as Docker's default seccomp profile and
//! `kernel.io_uring_disabled` do: a real seccomp filter, installed on one thread of this test
//! and inherited by the relay it starts, makes `io_uring_setup` fail with EPERM. With
//! `workers.backend = "auto"` the relay says why and runs on epoll, and a stream flows through
//! it to a UDP and an ICE-TCP player; with `"io_uring"` it stops at start with a message that
//! says how to allow io_uring or to choose epoll.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Relay, media_range};
use corecast::client::{self, ClientOptions, Incoming, Role, Transport};
use webrtc_dtls::crypto::Certificate;

/// Makes `io_uring_setup` fail with EPERM on the calling thread and on every process it starts
/// from now on (a seccomp filter is per thread and inherited across fork and exec); the test's
/// other threads are untouched. Call it on a thread of its own.
#[allow(unsafe_code)] // installing a seccomp filter is a prctl with a pointer; std has no API
fn refuse_io_uring_on_this_thread() {
    let statement = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let syscall_number = 0; // offset of `nr` in struct seccomp_data
    let filter = [
        statement(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            syscall_number,
            0,
            0,
        ),
        statement(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            0,
            0,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers; PR_SET_SECCOMP reads the program,
    // which outlives the call (the kernel copies it).
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ) == 0
    };
    assert!(
        installed,
        "installing the seccomp filter: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        corecast::io::probe_io_uring().is_err(),
        "the filter refuses io_uring on this thread"
    );
}

/// Runs `start` on a thread under the filter, so what it starts inherits it.
fn without_io_uring<T: Send + 'static>(start: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        refuse_io_uring_on_this_thread();
        start()
    })
    .join()
    .expect("the filtered thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_epoll_where_io_uring_is_refused_and_serves_a_stream() {
    let relay = without_io_uring(|| {
        Relay::start(&[
            ("CORECAST_WORKERS_COUNT", "2"),
            ("CORECAST_WORKERS_BACKEND", "auto"),
            ("CORECAST_MEDIA_PORTS", &media_range(6)),
            ("CORECAST_MEDIA_PROTOCOL", "all"),
        ])
    });
    let log = relay.log();
    let metrics = common::http("GET", &relay.url("/metrics"), None, "").body;
    assert!(
        metrics.contains("corecast_worker_backend{worker=\"0\",backend=\"epoll\"} 1")
            && metrics.contains("corecast_worker_backend{worker=\"1\",backend=\"epoll\"} 1"),
        "both workers run on epoll\n{log}"
    );
    if corecast::io::AUTO_PREFERS == corecast::io::IoBackend::IoUring {
        assert!(
            log.contains("io_uring is refused") && log.contains("the workers use epoll"),
            "one line says why the relay fell back\n{log}"
        );
    }

    let certificate = Certificate::generate_self_signed(vec!["backend".into()]).unwrap();
    let connect = |role, transport, handler| {
        let options = ClientOptions::new(
            relay.url(if role == Role::Publish {
                "/whip/contained"
            } else {
                "/whep/contained"
            }),
            role,
            transport,
            &certificate,
        );
        async move { client::connect(&options, handler).await }
    };
    let mut publisher = connect(Role::Publish, Transport::Udp, Box::new(|_| {}))
        .await
        .expect("publisher connects");
    let counter = |count: Arc<AtomicU64>| -> client::Handler {
        Box::new(move |incoming| {
            if let Incoming::Rtp(_) = incoming {
                count.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (udp, tcp) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let _udp_player = connect(Role::Play, Transport::Udp, counter(udp.clone()))
        .await
        .expect("UDP player connects");
    let _tcp_player = connect(Role::Play, Transport::Tcp, counter(tcp.clone()))
        .await
        .expect("ICE-TCP player connects");
    let video_pt = publisher.negotiated.video_payload_type.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seq = 0u16;
    while (udp.load(Ordering::Relaxed) < 100 || tcp.load(Ordering::Relaxed) < 100)
        && Instant::now() < deadline
    {
        let mut packet = vec![0x80, video_pt | 0x80];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
        packet.extend_from_slice(&publisher.video_ssrc.to_be_bytes());
        packet.resize(1000, 0x5a);
        publisher.send_rtp(&packet).await.unwrap();
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        udp.load(Ordering::Relaxed) >= 100 && tcp.load(Ordering::Relaxed) >= 100,
        "the stream reached both players through the epoll workers: UDP {}, TCP {}\n{}",
        udp.load(Ordering::Relaxed),
        tcp.load(Ordering::Relaxed),
        relay.log()
    );
}

#[test]
fn a_forced_io_uring_that_is_refused_stops_start_up_saying_how_to_allow_it() {
    let mut child = without_io_uring(|| {
        Command::new(env!("CARGO_BIN_EXE_corecast"))
            .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
            .env("CORECAST_WORKERS_BACKEND", "io_uring")
            .env("CORECAST_MEDIA_PORTS", media_range(2))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting corecast")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corecast kept running with a forced io_uring the kernel refuses");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "start-up fails");
    for needed in [
        "workers.backend = \"io_uring\"",
        "io_uring is refused",
        "sysctl -w kernel.io_uring_disabled=0",
        "seccomp",
        "workers.backend = \"epoll\"",
    ] {
        assert!(
            stderr.contains(needed),
            "the message says {needed:?}:\n{stderr}"
        );
    }
}

#[test]
fn tuning_check_says_the_workers_will_run_on_epoll_where_io_uring_is_refused() {
    let out = without_io_uring(|| {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/check"))
            .env("RELAY_BIN", env!("CARGO_BIN_EXE_corecast"))
            .output()
            .expect("running tuning/check")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("workers.backend"))
        .unwrap_or_else(|| panic!("a workers.backend row:\n{text}"));
    assert!(row.contains("epoll") && row.contains("ok"), "{row}");
    let forced = without_io_uring(|| {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/check"))
            .env("RELAY_BIN", env!("CARGO_BIN_EXE_corecast"))
            .env("CORECAST_WORKERS_BACKEND", "io_uring")
            .output()
            .expect("running tuning/check")
    });
    let text = String::from_utf8_lossy(&forced.stdout);
    assert!(
        !forced.status.success() && text.contains("FAIL") && text.contains("io_uring_disabled"),
        "a forced io_uring that cannot run fails the check:\n{text}"
    );
}
