// apptrace capture program: TLS plaintext from SSL_read/SSL_write[_ex] uprobes, tied to sockets.
//
// Read it top-down:
//   1. configuration          placeholders the loader fills in
//   2. kernel values          names for numbers the kernel defines
//   3. user-space contract    values and records that apptrace/contract/events.py decodes
//   4. state                  per-thread and per-connection structs kept in maps
//   5. maps                   every map, with its key and value (Go's are with their probes, in 12)
//   6. helpers                map keys, the tgid bitmap, filters, loss counters, wake-ups
//   7. records to user space  meta-event header, connection reports, data chunks
//   8. SSL uprobes            SSL_read/SSL_write[_ex] entry and return, SSL_set_fd
//   9. socket syscalls        read/write family, connect/accept, close
//  10. TCP tracepoints        socket state changes, received data
//  11. process lifecycle      fork, exec and exit
//  12. Go uprobes             crypto/tls.(*Conn).Read/Write entry and each RET, paired by goroutine
//  13. Pausing                 stop a process that opens an unknown libssl or execs an unknown file
//                              until user space has probed it
//
// Only <uapi/linux/ptrace.h> is included: the machines we run on may compile against
// another kernel's headers, and kernel-internal headers from another version break.

// ================================================================================================
// 1. Configuration
//
// Placeholders filled in by bpf_source() in apptrace/capture/loader.py:
//   __MAX_CHUNK__       bytes copied per ring-buffer record (power of two)
//   __MAX_CHUNKS__      records per SSL call; bytes past MAX_CHUNK*MAX_CHUNKS become an explicit gap
//   __WAKE_BYTES__      wake user space after this many bytes of records per CPU (batched wake-ups)
//   __FILTER__          1 when --pid/--comm restrict tracing
//   __FOLLOW_FORKS__    1 when the children a traced --pid forks are traced too
//   __RINGBUF_PAGES__   ring buffer size in pages
//   __TGID_WORDS__      u64 words of the TLS-process bitmap: pid_max / 64, rounded up
//   __PLAINTEXT__       1 to capture plaintext (non-TLS) sockets too; 0 with --no-plaintext
//   __PAUSE__           1 when processes are paused until unknown TLS objects are probed (section 13)
//   __HOST_PIDNS_DEV__, __HOST_PIDNS_INO__  the tracer's pid namespace (stat of /proc/self/ns/pid)
// ================================================================================================
#include <uapi/linux/ptrace.h>

#define MAX_CHUNK __MAX_CHUNK__
#define MAX_CHUNKS __MAX_CHUNKS__
#define WAKE_BYTES __WAKE_BYTES__
#define FILTER __FILTER__
#define FOLLOW_FORKS __FOLLOW_FORKS__
#define TGID_WORDS __TGID_WORDS__
#define PLAINTEXT __PLAINTEXT__
#define PAUSE __PAUSE__
#define HOST_PIDNS_DEV __HOST_PIDNS_DEV__ULL
#define HOST_PIDNS_INO __HOST_PIDNS_INO__ULL

// ================================================================================================
// 2. Kernel values
//
// The kernel headers that define these may not match the running kernel (see above), so the
// numbers are named here. They are ABI: stable across kernel versions.
// ================================================================================================

// BCC's helpers pull in errno.h's macro; an enum constant cannot share a macro's name.
#undef EINPROGRESS

enum {
    EINPROGRESS = 115,  // uapi/asm-generic/errno.h: a non-blocking connect() under way

    AF_UNIX = 1,        // linux/socket.h
    AF_INET = 2,
    AF_INET6 = 10,

    IPPROTO_TCP = 6,    // uapi/linux/in.h

    // include/net/tcp_states.h, as sock:inet_sock_set_state reports them
    TCP_ESTABLISHED = 1,
    TCP_SYN_SENT = 2,
    TCP_CLOSE = 7,
    TCP_LISTEN = 10,

    // struct sockaddr_in / sockaddr_in6 (uapi/linux/in.h, in6.h), read from user memory as
    // connect()/accept() were given them: the family is the first u16 of both
    SOCKADDR_FAMILY_OFF = 0,
    SIN_PORT_OFF = 2,
    SIN_ADDR_OFF = 4,
    SIN6_PORT_OFF = 2,
    SIN6_ADDR_OFF = 8,
    IPV4_ADDR_LEN = 4,
    IPV6_ADDR_LEN = 16,
    SUN_PATH_OFF = 2,   // struct sockaddr_un (uapi/linux/un.h): the path after the family
    SUN_PATH_LEN = 108,
    // struct user_msghdr (linux/socket.h) of sendmsg()/recvmsg(), and struct iovec (uapi/linux/uio.h)
    MSGHDR_IOV_OFF = 16,
    MSGHDR_IOVLEN_OFF = 24,
    IOVEC_SIZE = 16,

    TASK_COMM_LEN = 16,  // linux/sched.h: bpf_get_current_comm's buffer
};

// BPF_RB_NO_WAKEUP / BPF_RB_FORCE_WAKEUP (ring-buffer output flags) and
// BPF_LOCAL_STORAGE_GET_F_CREATE come with BCC's own helpers (uapi/linux/bpf.h).

// ================================================================================================
// 3. User-space contract
//
// Everything in this section is decoded by apptrace/contract/events.py. tests/test_bpf_layout.py
// compiles these enums and records with gcc and checks them against the Python decoders, so a
// change on one side alone fails there: change both together.
// ================================================================================================

enum event_type { EV_DATA = 1, EV_BIND = 2, EV_CONN = 3, EV_CLOSE = 4, EV_EXEC = 5, EV_EXIT = 6, EV_TGID = 7 };

// data_event.flags. User space copies runs of unflagged data records to disk without looking
// at each one: a record it must look at (to read /proc while the socket lives) says so.
enum data_flags { FLAG_LOOK = 1 };

// How a data record's fd was found.
enum fd_source {
    FD_NONE = 0,        // not found; an SSL_write's socket may be named by a later EV_BIND
    FD_NESTED = 1,      // a socket syscall made inside the SSL call
    FD_SSLMAP = 2,      // remembered for this SSL* (ssl_fd) from an earlier call, SSL_set_fd or EV_BIND
    FD_PRIOR_READ = 3,  // memory BIOs: the socket this thread read just before
    FD_CONN_STRUCT = 4, // read from the TLS connection's own structs (Go: tls.Conn -> net.Conn -> netFD)
    FD_SOCKET = 5,      // plaintext: the socket syscall's own fd
};

enum direction { DIR_EGRESS = 0, DIR_INGRESS = 1 };
enum role { ROLE_UNKNOWN = 0, ROLE_CLIENT = 1, ROLE_SERVER = 2 };
// Named as the loader names the probes (probe_openssl_write_enter) and TLS_LIBS names them.
enum tls_lib { TLS_LIB_NONE = 0, TLS_LIB_OPENSSL = 1, TLS_LIB_BORINGSSL = 2, TLS_LIB_GO = 3 };

// Indexes of the losses map.
enum loss_kind {
    LOSS_EVENTS = 0,        // ring buffer full: records dropped
    LOSS_BYTES = 1,         // ... and the plaintext bytes they carried
    LOSS_TRUNCATED = 2,     // bytes past MAX_CHUNKS*MAX_CHUNK in one call (a gap, not a drop)
    LOSS_CALLS = 3,         // SSL calls not tracked: no thread state could be created
    LOSS_READ_FAULTS = 4,   // bpf_probe_read_user failed (page not present)
    LOSS_UNFOLLOWED_FORKS = 5,  // children of a traced --pid not traced: allowed_tgids was full
    LOSS_KINDS = 6,
};

// One chunk of an SSL call's plaintext (EV_DATA). Sent with only the first len bytes of data[].
struct data_event {
    u8 type;
    u8 dir;
    u8 fd_source;
    u8 tls_lib;
    u32 tgid;
    u32 tid;
    s32 fd;
    u64 ts;
    u64 ssl;       // plaintext: PLAIN_SESSION_BIT | the socket's open_ts (no SSL*; the fd is reused, this is not)
    u64 pos;       // stream position of this call's first byte: lost records show as gaps
    u32 orig_len;  // bytes the SSL call moved
    u32 offset;    // where this chunk starts within the call
    u32 len;       // bytes of plaintext in this record
    u32 flags;     // FLAG_LOOK: a socket the kernel has no connection for, or a tgid past the bitmap
    char data[MAX_CHUNK];
};
#define DATA_HDR_SIZE __builtin_offsetof(struct data_event, data)

// Every other event. Fields an event type does not use are zero.
struct meta_event {
    u8 type;
    u8 pad[3];
    u32 tgid;
    u32 tid;
    s32 fd;
    u64 ts;
    u64 ssl;       // EV_BIND, EV_CLOSE; EV_CONN: the tgid that accepted the socket when another (its child) serves it
    u64 open_ts;   // EV_CONN, EV_CLOSE
    u32 role;      // EV_CONN, EV_CLOSE
    u16 family;    // remote address from connect()/accept() arguments
    u16 port;      // network byte order
    u8 addr[16];
    char comm[TASK_COMM_LEN]; // EV_EXEC, EV_TGID, EV_CONN
    s32 listen_fd; // EV_CONN of an accepted socket: its local address is the listener's
    u16 local_port;   // EV_CONN of a connected socket: from the TCP state change, host order
    u16 pad2;
    u8 local_addr[16];
};

// ================================================================================================
// 4. State kept between probes
// ================================================================================================

// struct task_struct is only passed along, to task storage: its layout is never needed.
struct task_struct;

// The SSL call a thread is in, from its entry uprobe to its return uprobe.
struct active_call {
    u64 start_ts;  // entry: when an SSL_write began sending, the request's first byte for a client
    u64 ssl;
    u64 buf;
    u64 out_len_ptr;  // size_t* of the _ex variants: the byte count comes through it
    s32 fd;           // filled by the first socket syscall nested in this call
    u32 depth;        // BoringSSL's SSL_read_ex calls SSL_read: only the outer call is captured
    u8 dir;
    u8 is_ex;
    u8 tls_lib;
};

// Per-thread state, in task-local storage: a field read or write where hash maps keyed by
// thread id cost an update and a delete per SSL call, on the traced program's own time.
struct thread_state {
    struct active_call call;  // valid while in_call
    u64 pending_write_ssl;    // memory BIOs: the SSL* whose ciphertext this thread's next socket write carries
    s32 last_read_fd;         // memory BIOs: the socket this thread read last
    s32 reading_fd;           // the read syscall in progress, for tcp:tcp_rcv_space_adjust
    u8 in_call;
    u8 has_pending_write;
    u8 has_last_read;
    u8 has_reading_fd;
    // A plaintext socket's read or write, from the syscall's entry to its exit: only the exit says
    // how many bytes moved (and, for a read, brings them).
    u8 io_pending;
    u8 io_dir;
    u8 self_checked;  // self_ignored says whether this thread's process is one of apptrace's own (ignored_tgids)
    u8 self_ignored;
    s32 io_fd;
    u32 io_iovcnt;    // 0: io_buf is the buffer; else io_buf is an iovec array of this many entries
    u64 io_buf;
    u64 io_start_ts;  // a write's entry: when its bytes left, as SSL_write's entry is for TLS
};

// What a socket carries, decided in the kernel from its first bytes either way (plain_decide).
// Below PROTO_TLS the socket is still looked at; from PROTO_TLS on, never again.
enum proto_state {
    PROTO_UNDECIDED = 0,
    PROTO_HTTP1 = 1,         // plaintext, copied: 1..4
    PROTO_HTTP2 = 2,
    PROTO_MYSQL = 3,
    PROTO_PGSQL = 4,
    PROTO_PG_ASKED = 5,      // a PostgreSQL SSLRequest/GSSENCRequest: the server's one-byte answer decides
    PROTO_MYSQL_HEADER = 6,  // a packet header with sequence 0, read alone: its payload says if it is a greeting
    PROTO_MYSQL_GREETED = 7, // a MySQL server greeting: the client's reply says TLS (SSL Request) or login
    PROTO_TLS = 8,           // TLS records: the TLS probes give its plaintext, the ciphertext is never copied
    PROTO_UNKNOWN = 9,       // none of the above: counted per process (unknown_protocol)
    PROTO_PG_CANCEL = 10,    // a PostgreSQL CancelRequest connection: no query on it
    PROTO_IGNORED = 11,      // apptrace's own socket (ignored_tgids), or one whose peer is (own_ends)
};
#define PLAIN_SESSION_BIT (1ULL << 63)  // above every user-space address: a plaintext session id is never an SSL*

// A TLS session: the same SSL* address in two processes is two sessions. Build it with a
// designated initializer, which zeroes pad: the map hashes every byte of the key.
struct ssl_key {
    u32 tgid;
    u32 pad;
    u64 ssl;
};

// Plaintext bytes a session has moved so far, indexed by enum direction.
struct stream_pos {
    u64 pos[2];
};

// A socket this process connected or accepted (or whose TCP traffic named it).
struct conn_info {
    u64 open_ts;
    u64 sk;  // the kernel socket, learned while connect() ran: keys sk_tuple
    s32 listen_fd;
    u32 role;
    u16 family;
    u16 port;        // remote port, network byte order
    u8 addr[16];     // remote address
    u16 local_port;  // host byte order; 0 until known
    u8 reported;     // EV_CONN already sent for this fd
    u8 proto;        // enum proto_state
    u8 local_addr[16];
    u8 plain_announced;  // a plaintext record was flagged FLAG_LOOK for this socket (capture reads /proc once)
    u8 plain_counted;    // counted in plain_live until it is decided not plaintext, or closed
    u16 pad2;
    u32 accept_tgid;     // a forking server's child serves this socket: the tgid whose listen_fd it is
    u64 plain_pos[2];    // plaintext bytes so far, indexed by enum direction (positions, for sockets)
};

// A connect()/accept() between its syscall entry and exit.
struct pending_connect {
    u64 sockaddr;
    u64 sk;
    s32 fd;  // connect: the socket; accept: the listening socket
    u32 role;
};

// A kernel socket's local address.
struct sk_tuple {
    u16 local_port;
    u16 pad;
    u8 local_addr[16];
};

struct own_end {
    u16 family;
    u16 pad;
    u8 addr[16];
};

struct comm_key {
    char c[TASK_COMM_LEN];
};

// Where a plaintext call's copy stands, between steps: one record per step, or one iovec looked up.
struct plain_copy {
    u64 buf;     // the flat buffer, or the iovec array
    u64 seg;     // the current segment's next byte
    u64 left;    // bytes left in the current segment
    u64 off;     // bytes of the call copied (or skipped) so far
    u64 total;
    u32 iovcnt;  // 0: a flat buffer
    u32 iov_i;
    u32 records;
    u32 pad;
};

// A Unix socket's path, as connect() named it (sockaddr_un.sun_path).
struct unix_path {
    char path[SUN_PATH_LEN];
};

// Connections of one process whose first bytes were no protocol apptrace parses.
struct unknown_count {
    u64 conns;
    char comm[TASK_COMM_LEN];
};

// The file a process exec'd, as execve() named it.
struct exec_path {
    char path[256];
};

// ================================================================================================
// 5. Maps
//
// Keys named {tgid, fd} are fd_key() values, {tgid, SSL*} ones struct ssl_key.
// ================================================================================================

// Records to user space: struct data_event (EV_DATA) and struct meta_event (the rest).
BPF_RINGBUF_OUTPUT(events, __RINGBUF_PAGES__);
// key: 0; value: struct data_event, per CPU. A data_event is too big for the BPF stack.
BPF_PERCPU_ARRAY(scratch, struct data_event, 1);
// key: enum loss_kind; value: u64 count, per CPU. Read by user space for its loss report.
BPF_PERCPU_ARRAY(losses, u64, LOSS_KINDS);
// key: 0; value: u64 bytes of records this CPU wrote since it last woke user space.
BPF_PERCPU_ARRAY(unwoken_bytes, u64, 1);

// key: the current task; value: struct thread_state.
BPF_TASK_STORAGE(threads, struct thread_state);
// key: {tgid, SSL*}; value: s32 socket fd. The fallback for SSL calls that make no syscall.
BPF_TABLE("lru_hash", struct ssl_key, s32, ssl_fd, 65536);
// key: {tgid, fd}; value: u64 SSL*. ssl_fd backwards, so close() can forget the session.
BPF_TABLE("lru_hash", u64, u64, fd_ssl, 65536);
// key: {tgid, SSL*}; value: struct stream_pos, plaintext bytes so far each way: lost records
// show up as position gaps.
BPF_TABLE("lru_hash", struct ssl_key, struct stream_pos, positions, 65536);
// key: tgid / 64; value: u64 word, bit tgid % 64 set for a tgid that has made SSL calls.
// Only their socket I/O is worth a look. The socket syscall tracepoints fire for every process
// on the machine (the load generator, the untraced servers), and this test, an array lookup
// the verifier inlines, is all those pay: a hash lookup here cost ~200 ns per read() and
// write() machine-wide.
BPF_ARRAY(tls_tgid_bits, u64, TGID_WORDS);
// key: 0; value: struct plain_copy, per CPU: where the copy of a plaintext call stands (emit_plain).
BPF_PERCPU_ARRAY(plain_copies, struct plain_copy, 1);
// key: tgid / 64; value: u64 word, bit tgid % 64 set while a tgid has a socket still looked at for
// plaintext (undecided, or a plaintext protocol; plain_live counts them): as tls_tgid_bits for TLS, every
// other process's reads and writes (and a bulk transfer's, once its socket was decided unknown) stop at
// this inlined array lookup.
BPF_ARRAY(plain_tgid_bits, u64, TGID_WORDS);
// key: u32 tgid; value: s64 its sockets counted in plain_live (conn_info.plain_counted). An entry the LRU
// drops only leaves the bit set: slower, not wrong.
BPF_TABLE("lru_hash", u32, s64, plain_live, 16384);
// key: u32 tgid that had a plaintext socket copied; value: u8 1. Only these (and TLS processes) report
// their exit: the others' sockets never reached user space.
BPF_TABLE("lru_hash", u32, u8, plain_reported, 16384);
// key: u32 tgid of apptrace's own processes; value: u8 1. Their sockets are never copied as plaintext.
BPF_HASH(ignored_tgids, u32, u8, 16);
// key: u64 kernel socket that one of apptrace's own processes connected (at SYN_SENT); value: u8 1.
BPF_TABLE("lru_hash", u64, u8, own_sks, 256);
// key: u16 local port (host order) of such a socket once established; value: struct own_end, its address.
// A socket accepted from there is apptrace talking to a local collector: never captured, or every
// export would describe the one before it (OTLP rows about OTLP posts, for good).
BPF_TABLE("lru_hash", u16, struct own_end, own_ends, 256);
// key: u32 tgid; value: s32 fd it accepted last, until it forks: a forking server's child (a PostgreSQL
// backend) serves that socket, and gets its conns entry (plain_fork).
BPF_TABLE("lru_hash", u32, s32, last_accept, 4096);
// key: u32 tgid; value: struct unknown_count. Read by user space for unknown_protocol_conns.
BPF_TABLE("lru_hash", u32, struct unknown_count, unknown_protocol, 4096);
// key: {tgid, fd}; value: struct unix_path, what a Unix socket connect() named. Read by user space on
// EV_CONN; not deleted on close (the event may be read after it), an LRU ages it out.
BPF_TABLE("lru_hash", u64, struct unix_path, unix_paths, 4096);
// key: {tgid, fd}; value: struct conn_info, how the socket was opened (connect or accept).
// User space adds the sockets open before it attached (Probes.seed_socket).
BPF_TABLE("lru_hash", u64, struct conn_info, conns, 65536);
// key: u64 pid_tgid of the calling thread; value: struct pending_connect. LRU: a thread killed inside
// connect() never reaches its exit, and its entry must not hold a slot for good.
BPF_TABLE("lru_hash", u64, struct pending_connect, pending_connect, 4096);
// key: u64 kernel socket address; value: struct sk_tuple, its local address once established.
// A short-lived client may be gone before user space could read /proc, so the kernel keeps it.
BPF_TABLE("lru_hash", u64, struct sk_tuple, sk_tuples, 65536);
// key: u16 local port in LISTEN state, host order; value: u8 1. An unknown socket on one of
// them is the server side. User space adds the ports listening before it attached.
BPF_TABLE("lru_hash", u16, u8, listen_ports, 4096);
// key: u32 tgid given with --pid, or forked by one (FOLLOW_FORKS); value: u8 1. Filled by user
// space and by sched_process_fork; read only when FILTER. An entry goes when its task exits, so a
// reused pid is never traced by mistake. Sized for a postmaster's or a pre-fork server's children.
BPF_HASH(allowed_tgids, u32, u8, 65536);
// key: struct comm_key, a comm given with --comm; value: u8 1. As allowed_tgids.
BPF_HASH(allowed_comms, struct comm_key, u8, 64);
// key: u32 tgid of a process that exec'd; value: struct exec_path. Read by user space on EV_EXEC
// only when /proc/PID/exe is already gone.
BPF_TABLE("lru_hash", u32, struct exec_path, exec_paths, 1024);

// ================================================================================================
// 6. Helpers
// ================================================================================================

// Key of conns and fd_ssl: fds belong to the process, so every thread finds the same entry.
// User space builds the same key to seed conns (Probes.seed_socket in the loader).
static __always_inline u64 fd_key(u32 tgid, s32 fd) {
    return ((u64)tgid << 32) | (u32)fd;
}

// The bitmap word that holds tgid's bit; NULL past the bitmap (pid_max raised after loading).
static __always_inline u64 *tgid_word(u32 tgid) {
    u32 w = tgid >> 6;
    return tls_tgid_bits.lookup(&w);
}

// A tgid past the bitmap counts as a TLS process: slower, not wrong.
static __always_inline int is_tls_tgid(u32 tgid) {
    u64 *word = tgid_word(tgid);
    return !word || ((*word >> (tgid & 63)) & 1);
}

// Returns 1 when the bit was clear: the tgid's first SSL call since it started or exec'd.
static __always_inline int mark_tls_tgid(u32 tgid) {
    u64 *word = tgid_word(tgid);
    if (!word || ((*word >> (tgid & 63)) & 1))
        return 0;
    __sync_fetch_and_or(word, 1ULL << (tgid & 63));
    return 1;
}

static __always_inline void unmark_tls_tgid(u32 tgid) {
    u64 *word = tgid_word(tgid);
    if (word && ((*word >> (tgid & 63)) & 1))
        __sync_fetch_and_and(word, ~(1ULL << (tgid & 63)));
}

// The same for plain_tgid_bits: a tgid past the bitmap has plaintext sockets to look at.
static __always_inline int is_plain_tgid(u32 tgid) {
    u32 w = tgid >> 6;
    u64 *word = plain_tgid_bits.lookup(&w);
    return !word || ((*word >> (tgid & 63)) & 1);
}

static __always_inline void mark_plain_tgid(u32 tgid) {
    u32 w = tgid >> 6;
    u64 *word = plain_tgid_bits.lookup(&w);
    if (word && !((*word >> (tgid & 63)) & 1))
        __sync_fetch_and_or(word, 1ULL << (tgid & 63));
}

static __always_inline void unmark_plain_tgid(u32 tgid) {
    u32 w = tgid >> 6;
    u64 *word = plain_tgid_bits.lookup(&w);
    if (word && ((*word >> (tgid & 63)) & 1))
        __sync_fetch_and_and(word, ~(1ULL << (tgid & 63)));
}

static __always_inline struct thread_state *thread_state(u64 flags) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    return threads.task_storage_get(task, 0, flags);
}

static __always_inline void count_loss(u32 kind, u64 n) {
    u64 *v = losses.lookup(&kind);
    if (v)
        *v += n;
}

static __always_inline int allowed(u32 tgid) {
    if (!FILTER)
        return 1;
    if (allowed_tgids.lookup(&tgid))
        return 1;
    struct comm_key key = {};
    bpf_get_current_comm(&key.c, sizeof(key.c));
    return allowed_comms.lookup(&key) != 0;
}

// Batched wake-ups: user space drains on a 20 ms timer and is woken early only when a CPU
// has written WAKE_BYTES (an eighth of the ring) since its last wake-up. Counting bytes, not
// records, keeps small records from costing a wake-up (and a context switch on the traced
// server's CPU) per few dozen SSL calls, and big ones from filling the ring unannounced.
static __always_inline u64 wake_flag(u64 size) {
    u32 zero = 0;
    u64 *n = unwoken_bytes.lookup(&zero);
    if (!n)
        return BPF_RB_FORCE_WAKEUP;
    *n += size;
    if (*n < WAKE_BYTES)
        return BPF_RB_NO_WAKEUP;
    *n = 0;
    return BPF_RB_FORCE_WAKEUP;
}

// Remember which socket carries a session, both ways (ssl_fd, fd_ssl).
static __always_inline void bind_fd(u32 tgid, u64 ssl, s32 fd) {
    struct ssl_key k = {.tgid = tgid, .ssl = ssl};
    s32 *known = ssl_fd.lookup(&k);
    if (known && *known == fd)
        return;
    ssl_fd.update(&k, &fd);
    u64 fkey = fd_key(tgid, fd);
    fd_ssl.update(&fkey, &ssl);
}

// ================================================================================================
// 7. Records to user space
// ================================================================================================

// Every meta_event starts here. The whole event is zeroed, not only the header: user space
// reads the fields an event type leaves alone as zero, and the verifier refuses to copy
// uninitialised stack (the padding too) into the ring buffer.
static __always_inline void meta_header(struct meta_event *m, u8 type, u32 tgid, u32 tid, u64 ts) {
    *m = (struct meta_event){};
    m->type = type;
    m->ts = ts;
    m->tgid = tgid;
    m->tid = tid;
}

static __always_inline void emit_meta(struct meta_event *m) {
    if (events.ringbuf_output(m, sizeof(*m), wake_flag(sizeof(*m))) != 0)
        count_loss(LOSS_EVENTS, 1);
}

static __always_inline void emit_conn(struct conn_info *ci, u32 tgid, u32 tid, s32 fd, u64 ts) {
    struct meta_event m;
    meta_header(&m, EV_CONN, tgid, tid, ts);
    m.fd = fd;
    m.role = ci->role;
    m.open_ts = ci->open_ts;
    m.listen_fd = ci->listen_fd;
    m.ssl = ci->accept_tgid;
    if (ci->local_port) {
        m.local_port = ci->local_port;
        __builtin_memcpy(m.local_addr, ci->local_addr, sizeof(m.local_addr));
    } else if (ci->sk) {
        struct sk_tuple *t = sk_tuples.lookup(&ci->sk);
        if (t) {
            m.local_port = t->local_port;
            __builtin_memcpy(m.local_addr, t->local_addr, sizeof(m.local_addr));
        }
    }
    m.family = ci->family;
    m.port = ci->port;
    __builtin_memcpy(m.addr, ci->addr, sizeof(m.addr));
    // Forked processes (PostgreSQL backends) never exec: the kernel's comm names them even
    // when they are gone before user space reads /proc.
    bpf_get_current_comm(&m.comm, sizeof(m.comm));
    // Wake user space now: it reads what the kernel did not say from /proc while the socket lives.
    if (events.ringbuf_output(&m, sizeof(m), BPF_RB_FORCE_WAKEUP) != 0) {
        count_loss(LOSS_EVENTS, 1);
        // User space copies this socket's data unread from now on: only this event tells it
        // about the socket, so the next data call on it tries again.
        ci->reported = 0;
    }
}

// First data on a socket: tell user space how it was opened (role, addresses), in order, before the data.
// ts 0: now (read only when there is something to report: this runs on every data call).
// Returns 0 when the kernel knows no connection on this fd: user space must look at it; -1 for a
// socket of apptrace's own traffic (PROTO_IGNORED), whose data is not to be copied.
static __always_inline int report_conn(u32 tgid, u32 tid, s32 fd, u64 ts) {
    u64 key = fd_key(tgid, fd);
    struct conn_info *ci = conns.lookup(&key);
    if (!ci)
        return 0;
    if (ci->proto == PROTO_IGNORED)
        return -1;
    if (!ci->reported) {
        ci->reported = 1;
        emit_conn(ci, tgid, tid, fd, ts ? ts : bpf_ktime_get_ns());
    }
    return 1;
}

// An SSL call's plaintext, as records of at most MAX_CHUNK bytes each.
static __always_inline void emit_data(struct active_call *a, u64 id, u64 total, s32 fd, u8 src, u32 flags) {
    u32 zero = 0;
    struct ssl_key k = {.tgid = id >> 32, .ssl = a->ssl};
    struct stream_pos fresh = {};
    struct stream_pos *sp = positions.lookup_or_try_init(&k, &fresh);
    u64 pos = 0;
    if (sp) {
        u32 d = a->dir & 1;
        pos = sp->pos[d];
        sp->pos[d] = pos + total;
    }
    struct data_event *e = scratch.lookup(&zero);
    if (!e)
        return;
    e->type = EV_DATA;
    // Written bytes left when SSL_write was entered (a client preempted by the server it woke
    // would otherwise look faster than the server); read bytes are there when SSL_read returns.
    e->ts = a->dir == DIR_EGRESS ? a->start_ts : bpf_ktime_get_ns();
    e->ssl = a->ssl;
    e->tgid = id >> 32;
    e->tid = (u32)id;
    e->fd = fd;
    e->pos = pos;
    e->orig_len = total > 0xffffffff ? 0xffffffff : (u32)total;
    e->dir = a->dir;
    e->fd_source = src;
    e->tls_lib = a->tls_lib;
    // Past the bitmap no EV_TGID announces the process: user space checks these records itself.
    e->flags = flags | ((id >> 32) >= (u64)TGID_WORDS * 64 ? FLAG_LOOK : 0);
    for (u32 i = 0; i < MAX_CHUNKS; i++) {
        u64 off = (u64)i * MAX_CHUNK;
        if (off >= total)
            break;
        u64 n = total - off;
        if (n > MAX_CHUNK)
            n = MAX_CHUNK;
        // The verifier wants the size provably within data[]: a 64-bit mask after the clamp.
        n &= (2 * MAX_CHUNK - 1);
        if (n > MAX_CHUNK)
            n = MAX_CHUNK;
        e->offset = (u32)off;
        e->len = (u32)n;
        if (bpf_probe_read_user(e->data, n, (void *)(a->buf + off)) != 0) {
            count_loss(LOSS_READ_FAULTS, 1);
            e->len = 0;
            n = 0;
        }
        if (events.ringbuf_output(e, DATA_HDR_SIZE + n, wake_flag(DATA_HDR_SIZE + n)) != 0) {
            count_loss(LOSS_EVENTS, 1);
            count_loss(LOSS_BYTES, n);
        }
    }
    if (total > (u64)MAX_CHUNKS * MAX_CHUNK)
        count_loss(LOSS_TRUNCATED, total - (u64)MAX_CHUNKS * MAX_CHUNK);
}

// ================================================================================================
// 8. SSL uprobes
//
// Entry uprobes remember the call in the thread's state; the return uprobe, shared by every
// variant, finds the call's socket and emits its plaintext.
// ================================================================================================

// A process's first TLS call: ahead of its data in the ring, user space describes the process
// from /proc (once), instead of checking every data record for a process it has not seen.
static __always_inline void announce_tgid(u32 tgid, u64 id) {
    if (mark_tls_tgid(tgid)) {
        struct meta_event m;
        meta_header(&m, EV_TGID, tgid, (u32)id, bpf_ktime_get_ns());
        bpf_get_current_comm(&m.comm, sizeof(m.comm));
        if (events.ringbuf_output(&m, sizeof(m), BPF_RB_FORCE_WAKEUP) != 0) {
            count_loss(LOSS_EVENTS, 1);
            unmark_tls_tgid(tgid);  // the next TLS call announces the process again
        }
    }
}

static __always_inline int call_enter(struct pt_regs *ctx, u8 dir, u8 is_ex, u8 lib) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!allowed(tgid))
        return 0;
    struct thread_state *ts = thread_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!ts) {
        count_loss(LOSS_CALLS, 1);
        return 0;
    }
    // apptrace's own TLS (OTLP to an https collector) is never captured: a hash lookup once per
    // thread, not per call. User space names its processes before they make a TLS call.
    if (!ts->self_checked) {
        ts->self_checked = 1;
        ts->self_ignored = ignored_tgids.lookup(&tgid) != 0;
    }
    if (ts->self_ignored)
        return 0;
    struct active_call *c = &ts->call;
    if (ts->in_call) {
        c->depth++;
        return 0;
    }
    c->start_ts = dir == DIR_EGRESS ? bpf_ktime_get_ns() : 0;  // a read is stamped when it returns
    c->ssl = PT_REGS_PARM1(ctx);
    c->buf = PT_REGS_PARM2(ctx);
    c->out_len_ptr = is_ex ? PT_REGS_PARM4(ctx) : 0;
    c->fd = -1;
    c->depth = 0;
    c->dir = dir;
    c->is_ex = is_ex;
    c->tls_lib = lib;
    ts->in_call = 1;
    announce_tgid(tgid, id);
    return 0;
}

static __always_inline int call_return(struct pt_regs *ctx) {
    struct thread_state *ts = thread_state(0);
    if (!ts || !ts->in_call)
        return 0;
    struct active_call *a = &ts->call;
    if (a->depth) {
        a->depth--;
        return 0;
    }
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    // SSL_read/SSL_write return int: the upper half of rax is not part of the value.
    s32 ret = (s32)PT_REGS_RC(ctx);
    u64 total = 0;
    if (a->is_ex) {
        if (ret == 1 && a->out_len_ptr)
            bpf_probe_read_user(&total, sizeof(total), (void *)a->out_len_ptr);
    } else if (ret > 0) {
        total = ret;
    }
    s32 fd = a->fd;
    u8 src = FD_NESTED;
    if (fd >= 0) {
        bind_fd(tgid, a->ssl, fd);
    } else {
        struct ssl_key k = {.tgid = tgid, .ssl = a->ssl};
        s32 *known = ssl_fd.lookup(&k);
        if (known) {
            fd = *known;
            src = FD_SSLMAP;
        } else if (a->dir == DIR_INGRESS) {
            // Memory-BIO apps (node) read the socket just before SSL_read, on the same thread.
            if (ts->has_last_read) {
                fd = ts->last_read_fd;
                src = FD_PRIOR_READ;
            } else {
                src = FD_NONE;
            }
        } else {
            // ... and write the ciphertext just after SSL_write: bind on that write (EV_BIND).
            src = FD_NONE;
            ts->pending_write_ssl = a->ssl;
            ts->has_pending_write = 1;
        }
    }
    if (total > 0) {
        int known = fd >= 0 ? report_conn(tgid, (u32)id, fd, 0) : 1;
        if (known >= 0)
            emit_data(a, id, total, fd, src, known ? 0 : FLAG_LOOK);
    }
    ts->in_call = 0;
    return 0;
}

// The loader attaches probe_<lib>_<variant> to each library's SSL_<variant> symbol.
#define DEFINE_TLS_PROBES(lib, lib_id)                                                               \
    int probe_##lib##_write_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_EGRESS, 0, lib_id); } \
    int probe_##lib##_read_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_INGRESS, 0, lib_id); } \
    int probe_##lib##_write_ex_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_EGRESS, 1, lib_id); } \
    int probe_##lib##_read_ex_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_INGRESS, 1, lib_id); }

DEFINE_TLS_PROBES(openssl, TLS_LIB_OPENSSL)
DEFINE_TLS_PROBES(boringssl, TLS_LIB_BORINGSSL)

int probe_ssl_return(struct pt_regs *ctx) { return call_return(ctx); }

int probe_ssl_set_fd(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!allowed(tgid))
        return 0;
    s32 fd = (s32)PT_REGS_PARM2(ctx);
    if (fd >= 0)
        bind_fd(tgid, PT_REGS_PARM1(ctx), fd);
    return 0;
}

// ================================================================================================
// 9. Socket syscalls
// ================================================================================================

// ---- 9a. Plaintext sockets ----
//
// A socket of a process that connected or accepted it (conns) is looked at until its first bytes,
// either way, decide what it carries (enum proto_state). HTTP/1, HTTP/2 (prior knowledge), MySQL and
// PostgreSQL sockets are copied as data records, keyed by PLAIN_SESSION_BIT | open_ts where TLS
// records carry their SSL*; TLS sockets are left to the TLS probes; anything else is counted once
// and never looked at again. Entry remembers the buffer; the exit copies what the call moved.

enum {
    PLAIN_HEAD = 16,     // bytes read to decide a socket's protocol
    PLAIN_MAX_IOV = 64,  // iovec entries of one readv/writev/sendmsg/recvmsg looked at; the rest is a gap
    MYSQL_HEADER = 4,    // 3-byte little-endian length, 1-byte sequence id
    MYSQL_PROTOCOL_10 = 10,
    MYSQL_CLIENT_SSL = 0x800,
    MYSQL_SSL_REQUEST_LEN = 32,  // caps, max packet, charset, filler: a login is longer (it names a user)
    PG_PROTOCOL_3_0 = 196608,
    PG_SSL_REQUEST = 80877103,
    PG_GSSENC_REQUEST = 80877104,
    PG_CANCEL_REQUEST = 80877102,
    PG_MAX_STARTUP = 10000,
};

static __always_inline u32 be32(const u8 *b) {
    return ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | b[3];
}

static __always_inline u32 word4(const u8 *b) {
    return (u32)b[0] | ((u32)b[1] << 8) | ((u32)b[2] << 16) | ((u32)b[3] << 24);
}

#define W4(a, b, c, d) ((u32)(a) | ((u32)(b) << 8) | ((u32)(c) << 16) | ((u32)(d) << 24))

static __always_inline int is_http1_start(const u8 *h, u32 n) {
    if (n < 5)
        return 0;
    u32 w = word4(h);
    if (w == W4('G', 'E', 'T', ' ') || w == W4('P', 'U', 'T', ' '))
        return 1;
    if ((w == W4('P', 'O', 'S', 'T') || w == W4('H', 'E', 'A', 'D')) && h[4] == ' ')
        return 1;
    if (w == W4('D', 'E', 'L', 'E') || w == W4('P', 'A', 'T', 'C') || w == W4('O', 'P', 'T', 'I') ||
        w == W4('C', 'O', 'N', 'N') || w == W4('T', 'R', 'A', 'C'))
        return 1;
    // A response first: attached to a connection whose request went by before.
    return n >= 7 && w == W4('H', 'T', 'T', 'P') && h[4] == '/' && h[5] == '1' && h[6] == '.';
}

// The next state of a socket in `state` (below PROTO_TLS, not copied yet) whose next call moved the
// bytes h[0..n). *copy: whether this call's bytes are the start of what is copied.
static __always_inline u8 plain_decide(u8 state, const u8 *h, u32 n, int *copy) {
    *copy = 0;
    if (n == 0)
        return state;
    if (state == PROTO_PG_ASKED) {
        // 'S' (TLS follows) or 'G' (GSSAPI encryption follows): from here on not plaintext SQL.
        if (h[0] == 'S' || h[0] == 'G')
            return PROTO_TLS;
        // 'N': the client goes on in plaintext, with its StartupMessage next.
        return h[0] == 'N' && n == 1 ? PROTO_PGSQL : PROTO_UNKNOWN;
    }
    if (state == PROTO_MYSQL_HEADER)
        return h[0] == MYSQL_PROTOCOL_10 ? PROTO_MYSQL_GREETED : PROTO_UNKNOWN;
    if (state == PROTO_MYSQL_GREETED) {
        // The client's reply, sequence 1: an SSL Request (CLIENT_SSL, exactly 32 bytes) upgrades to TLS.
        if (n < MYSQL_HEADER || h[3] != 1)
            return PROTO_UNKNOWN;
        u32 len = h[0] | ((u32)h[1] << 8) | ((u32)h[2] << 16);
        if (len == MYSQL_SSL_REQUEST_LEN && (n < 8 || (word4(h + 4) & MYSQL_CLIENT_SSL)))
            return PROTO_TLS;
        *copy = 1;
        return PROTO_MYSQL;
    }
    // PROTO_UNDECIDED: the socket's first bytes.
    if (n >= 3 && h[0] >= 0x14 && h[0] <= 0x17 && h[1] == 0x03 && h[2] <= 0x04)
        return PROTO_TLS;  // a TLS record: handshake, or application data of a socket open before we attached
    if (n >= 8 && word4(h) == W4('P', 'R', 'I', ' ') && word4(h + 4) == W4('*', ' ', 'H', 'T')) {
        *copy = 1;
        return PROTO_HTTP2;
    }
    if (n >= 9 && h[3] == 4 && h[4] == 0 && (h[5] | h[6] | h[7] | h[8]) == 0 && h[0] == 0 && h[1] == 0 &&
        h[2] % 6 == 0) {
        // An HTTP/2 SETTINGS frame on stream 0 (short, whole 6-byte settings): a server that speaks first
        // (nghttpd sends its SETTINGS before reading the client's preface).
        *copy = 1;
        return PROTO_HTTP2;
    }
    if (is_http1_start(h, n)) {
        *copy = 1;
        return PROTO_HTTP1;
    }
    if (n >= MYSQL_HEADER && h[3] == 0) {
        u32 len = h[0] | ((u32)h[1] << 8) | ((u32)h[2] << 16);
        if (len >= 20 && len <= 1024) {
            if (n == MYSQL_HEADER)
                return PROTO_MYSQL_HEADER;  // the client read the header alone
            if (h[4] == MYSQL_PROTOCOL_10)
                return PROTO_MYSQL_GREETED;
        }
    }
    if (n >= 8) {
        u32 len = be32(h), code = be32(h + 4);
        if (code == PG_PROTOCOL_3_0 && len > 8 && len <= PG_MAX_STARTUP) {
            *copy = 1;
            return PROTO_PGSQL;
        }
        if ((code == PG_SSL_REQUEST || code == PG_GSSENC_REQUEST) && len == 8)
            return PROTO_PG_ASKED;
        if (code == PG_CANCEL_REQUEST && len == 16)
            return PROTO_PG_CANCEL;
    }
    return PROTO_UNKNOWN;
}

// A socket syscall's entry on a socket still worth a look: remember where its bytes are.
static __always_inline void plain_io_enter(s32 fd, u8 dir, u64 buf, u32 iovcnt, int is_msghdr, int local_known) {
    struct thread_state *ts = thread_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!ts) {
        count_loss(LOSS_CALLS, 1);
        return;
    }
    if (is_msghdr) {
        u64 iov = 0, iovlen = 0;
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(buf + MSGHDR_IOV_OFF)) ||
            bpf_probe_read_user(&iovlen, sizeof(iovlen), (void *)(buf + MSGHDR_IOVLEN_OFF))) {
            count_loss(LOSS_READ_FAULTS, 1);
            return;
        }
        buf = iov;
        iovcnt = iovlen > 0xffffffff ? 0xffffffff : (u32)iovlen;
        if (!iovcnt)
            return;
    }
    ts->io_fd = fd;
    ts->io_dir = dir;
    ts->io_buf = buf;
    ts->io_iovcnt = iovcnt;
    ts->io_start_ts = dir == DIR_EGRESS ? bpf_ktime_get_ns() : 0;
    ts->io_pending = 1;
    if (dir == DIR_INGRESS && !local_known) {
        // accept4(fd, NULL, ...) gave no address: the TCP read names the 4-tuple (tcp_rcv_space_adjust).
        ts->reading_fd = fd;
        ts->has_reading_fd = 1;
    }
}

// The first bytes of the call's data into h; how many.
static __always_inline u32 plain_head(struct thread_state *ts, u64 moved, u8 *h) {
    u64 base = ts->io_buf, len = moved;
    if (ts->io_iovcnt) {
        u64 v[2] = {};
        if (bpf_probe_read_user(v, sizeof(v), (void *)base))
            return 0;
        base = v[0];
        if (v[1] < len)
            len = v[1];
    }
    if (len > PLAIN_HEAD)
        len = PLAIN_HEAD;
    len &= (2 * PLAIN_HEAD - 1);
    if (len > PLAIN_HEAD)
        len = PLAIN_HEAD;
    if (!len || bpf_probe_read_user(h, len, (void *)base))
        return 0;
    return (u32)len;
}

// A socket to look at: its process's bit goes on (after the count, see plain_live_done).
static __always_inline void plain_live_add(u32 tgid, struct conn_info *ci) {
    s64 zero = 0;
    s64 *n = plain_live.lookup_or_try_init(&tgid, &zero);
    if (n) {
        __sync_fetch_and_add(n, 1);
        ci->plain_counted = 1;
    }
    mark_plain_tgid(tgid);
}

// A socket no longer looked at (decided not plaintext, or closed): the last one takes its process's bit
// off. A socket counted meanwhile by another thread is seen by the second look, or marks after it.
static __always_inline void plain_live_done(u32 tgid, struct conn_info *ci) {
    if (!ci->plain_counted)
        return;
    ci->plain_counted = 0;
    s64 *n = plain_live.lookup(&tgid);
    if (!n)
        return;
    __sync_fetch_and_add(n, -1);
    if (*n > 0)
        return;
    unmark_plain_tgid(tgid);
    if (*n > 0)
        mark_plain_tgid(tgid);
}

static __always_inline void count_unknown(u32 tgid) {
    struct unknown_count fresh = {};
    bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
    struct unknown_count *c = unknown_protocol.lookup_or_try_init(&tgid, &fresh);
    if (c)
        __sync_fetch_and_add(&c->conns, 1);
}


// One step of the copy. Returns 1 to stop. Its state lives in a map (plain_copies), which the verifier
// does not track: each step starts from the same unknowns, so the branches of one step (last chunk of
// a segment or not, the next iovec or not) do not multiply into the next.
static __always_inline int plain_copy_step(struct plain_copy *c) {
    if (c->off >= c->total || c->records >= MAX_CHUNKS)
        return 1;
    if (c->left == 0) {
        // The next iovec; one without bytes costs a step.
        if (c->iov_i >= c->iovcnt || c->iov_i >= PLAIN_MAX_IOV)
            return 1;
        u64 v[2] = {};
        if (bpf_probe_read_user(v, sizeof(v), (void *)(c->buf + (u64)c->iov_i * IOVEC_SIZE))) {
            count_loss(LOSS_READ_FAULTS, 1);
            return 1;
        }
        c->iov_i++;
        c->seg = v[0];
        c->left = v[1] < c->total - c->off ? v[1] : c->total - c->off;
        return 0;
    }
    u32 zero = 0;
    struct data_event *e = scratch.lookup(&zero);
    if (!e)
        return 1;
    u64 n = c->left;
    if (n > MAX_CHUNK)
        n = MAX_CHUNK;
    n &= (2 * MAX_CHUNK - 1);
    if (n > MAX_CHUNK)
        n = MAX_CHUNK;
    e->offset = (u32)c->off;
    e->len = (u32)n;
    u64 sent = n;
    if (bpf_probe_read_user(e->data, n, (void *)c->seg) != 0) {
        count_loss(LOSS_READ_FAULTS, 1);
        e->len = 0;
        sent = 0;
    }
    if (events.ringbuf_output(e, DATA_HDR_SIZE + sent, wake_flag(DATA_HDR_SIZE + sent)) != 0) {
        count_loss(LOSS_EVENTS, 1);
        count_loss(LOSS_BYTES, sent);
    }
    e->flags &= ~FLAG_LOOK;  // the call's first record carries the look
    c->seg += n;
    c->left -= n;
    c->off += n;
    c->records++;
    return 0;
}

// The call's bytes as data records of at most MAX_CHUNK bytes, walking its iovecs if it has some.
static __always_inline void emit_plain(struct conn_info *ci, struct thread_state *ts, u64 id, u64 total, u32 flags) {
    u32 zero = 0;
    struct data_event *e = scratch.lookup(&zero);
    if (!e)
        return;
    u8 d = ts->io_dir & 1;
    u64 pos = ci->plain_pos[d];
    ci->plain_pos[d] = pos + total;
    e->type = EV_DATA;
    e->ts = d == DIR_EGRESS ? ts->io_start_ts : bpf_ktime_get_ns();
    e->ssl = PLAIN_SESSION_BIT | ci->open_ts;
    e->tgid = id >> 32;
    e->tid = (u32)id;
    e->fd = ts->io_fd;
    e->pos = pos;
    e->orig_len = total > 0xffffffff ? 0xffffffff : (u32)total;
    e->dir = d;
    e->fd_source = FD_SOCKET;
    e->tls_lib = TLS_LIB_NONE;
    e->flags = flags | ((id >> 32) >= (u64)TGID_WORDS * 64 ? FLAG_LOOK : 0);
    struct plain_copy *c = plain_copies.lookup(&zero);
    if (!c)
        return;
    c->buf = ts->io_buf;
    c->seg = ts->io_buf;
    c->left = ts->io_iovcnt ? 0 : total;
    c->off = 0;
    c->total = total;
    c->iovcnt = ts->io_iovcnt;
    c->iov_i = 0;
    c->records = 0;
    for (u32 i = 0; i < MAX_CHUNKS + PLAIN_MAX_IOV; i++) {
        asm volatile("" ::: "memory");  // the step reads its state from the map, not from registers
        if (plain_copy_step(c))
            break;
    }
    // Past MAX_CHUNKS records or PLAIN_MAX_IOV iovecs: the positions make the rest a gap.
    if (c->off < total)
        count_loss(LOSS_TRUNCATED, total - c->off);
}

// A socket syscall's exit: decide the socket's protocol from its first bytes, copy a plaintext one's.
static __always_inline void on_socket_io_exit(s64 ret) {
    if (!PLAINTEXT)
        return;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_plain_tgid(tgid))
        return;
    struct thread_state *ts = thread_state(0);
    if (!ts || !ts->io_pending)
        return;
    ts->io_pending = 0;
    // tcp_rcv_space_adjust came inside the call if it was to come: a read that copied nothing (EAGAIN)
    // must not leave the fd armed for another socket's read.
    ts->has_reading_fd = 0;
    if (ret <= 0)
        return;
    u64 fkey = fd_key(tgid, ts->io_fd);
    struct conn_info *ci = conns.lookup(&fkey);
    if (!ci || ci->proto >= PROTO_TLS)
        return;
    u64 total = (u64)ret;
    if (ci->proto < PROTO_HTTP1 || ci->proto > PROTO_PGSQL) {
        u8 h[PLAIN_HEAD] = {};
        u32 n = plain_head(ts, total, h);
        int copy = 0;
        u8 next = plain_decide(ci->proto, h, n, &copy);
        ci->proto = next;
        if (next == PROTO_UNKNOWN)
            count_unknown(tgid);
        if (next >= PROTO_TLS)
            plain_live_done(tgid, ci);
        if (!copy) {
            // Not copied (a greeting, a TLS upgrade request or answer): its bytes still count, so the
            // stream positions stay those of the socket.
            ci->plain_pos[ts->io_dir & 1] += total;
            return;
        }
        if (!ci->open_ts)
            ci->open_ts = bpf_ktime_get_ns();  // seeded, or named by a TCP tracepoint: the session starts now
    }
    u32 flags = 0;
    if (!ci->plain_announced) {
        // Capture reads this process's and socket's /proc entries once, ahead of the data it copies unread.
        ci->plain_announced = 1;
        flags = FLAG_LOOK;
    }
    if (!ci->reported) {
        ci->reported = 1;
        emit_conn(ci, tgid, (u32)id, ts->io_fd, bpf_ktime_get_ns());
        u8 one = 1;
        plain_reported.update(&tgid, &one);
    }
    emit_plain(ci, ts, id, total, flags);
}

// ---- 9b. Socket I/O for TLS sessions, and the plaintext entry ----

// Socket I/O: tells which fd an SSL call (or the call just before/after it) used; on a plaintext
// socket, remembers the call's buffer for its exit. buf: the buffer, or the iovec array (iovcnt > 0),
// or the struct user_msghdr (is_msghdr).
static __always_inline void on_socket_io(s32 fd, int is_read, u64 buf, u32 iovcnt, int is_msghdr) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    // Only sockets this process connected or accepted (or that user space found open at start)
    // may stand for a TLS session: SSL calls and the code around them also read files
    // (node reads tzdata while verifying a certificate), eventfds and pipes.
    int tls = is_tls_tgid(tgid);  // an SSL call in flight marked it already
    if (!tls && !(PLAINTEXT && is_plain_tgid(tgid)))
        return;
    u64 fkey = fd_key(tgid, fd);
    struct conn_info *ci = conns.lookup(&fkey);
    // Only counted sockets (plain_live): a TLS process's sockets named by a TCP read (tcp_rcv_space_adjust)
    // are the TLS probes' business, and the exit looks only while the process's bit is on.
    if (PLAINTEXT && ci && ci->plain_counted && ci->proto < PROTO_TLS)
        plain_io_enter(fd, is_read ? DIR_INGRESS : DIR_EGRESS, buf, iovcnt, is_msghdr, ci->local_port != 0);
    if (!tls)
        return;
    struct thread_state *ts = thread_state(0);
    int in_call = ts && ts->in_call;
    if (is_read && (!ci || !ci->local_port)) {
        // tcp:tcp_rcv_space_adjust, fired inside this read if fd is a TCP socket, completes the
        // picture. Once a socket's addresses are known there is nothing left for it to say.
        if (!ts)
            ts = thread_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
        if (!ts)
            return;
        ts->reading_fd = fd;
        ts->has_reading_fd = 1;
    } else if (is_read && ts) {
        // A read that copied nothing (EAGAIN) left the last fd armed: this socket's
        // tcp_rcv_space_adjust would hand its port to that fd's connection.
        ts->has_reading_fd = 0;
    }
    if (!ci)
        return;
    if (in_call) {
        if (ts && ts->call.fd < 0)
            ts->call.fd = fd;
        return;
    }
    if (is_read) {
        if (!ts)
            ts = thread_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
        if (ts) {
            ts->last_read_fd = fd;
            ts->has_last_read = 1;
        }
        return;
    }
    if (!ts || !ts->has_pending_write)
        return;
    u64 ssl = ts->pending_write_ssl;
    ts->has_pending_write = 0;
    struct meta_event m;
    meta_header(&m, EV_BIND, tgid, (u32)id, bpf_ktime_get_ns());
    m.ssl = ssl;
    m.fd = fd;
    bind_fd(tgid, ssl, fd);
    report_conn(tgid, (u32)id, fd, m.ts);
    emit_meta(&m);
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) { on_socket_io(args->fd, 1, (u64)args->buf, 0, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { on_socket_io(args->fd, 1, (u64)args->vec, args->vlen, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { on_socket_io(args->fd, 1, (u64)args->ubuf, 0, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { on_socket_io(args->fd, 1, (u64)args->msg, 0, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { on_socket_io(args->fd, 0, (u64)args->buf, 0, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { on_socket_io(args->fd, 0, (u64)args->vec, args->vlen, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { on_socket_io(args->fd, 0, (u64)args->buff, 0, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { on_socket_io(args->fd, 0, (u64)args->msg, 0, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { on_socket_io_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { on_socket_io_exit(args->ret); return 0; }

// Connection lifecycle: connect() makes a client, accept() a server. Kept in a map, reported
// only when TLS data first flows on the fd, so untraced processes cost no events.
static __always_inline void connect_enter(s32 fd, u64 sockaddr, u32 role) {
    u64 id = bpf_get_current_pid_tgid();
    if (!allowed(id >> 32))
        return;
    struct pending_connect p = {.sockaddr = sockaddr, .fd = fd, .role = role};
    pending_connect.update(&id, &p);
}

// The accepted peer is a socket one of apptrace's own processes connected from this host (own_ends).
static __always_inline int peer_is_own(struct conn_info *ci) {
    if (ci->family != AF_INET && ci->family != AF_INET6)
        return 0;
    u16 port = __builtin_bswap16(ci->port);
    struct own_end *own = own_ends.lookup(&port);
    if (!own)
        return 0;
    u64 peer_hi, peer_lo, own_hi, own_lo;
    u32 peer_v4, own_v4;
    __builtin_memcpy(&peer_hi, ci->addr, 8);
    __builtin_memcpy(&peer_lo, ci->addr + 8, 8);
    __builtin_memcpy(&own_hi, own->addr, 8);
    __builtin_memcpy(&own_lo, own->addr + 8, 8);
    __builtin_memcpy(&own_v4, own->addr, 4);
    __builtin_memcpy(&peer_v4, ci->addr + 12, 4);
    if (own->family == ci->family)
        return peer_hi == own_hi && peer_lo == own_lo;  // IPv4 addresses are zero past their 4 bytes
    // An IPv4 client accepted by a dual-stack listener shows as ::ffff:a.b.c.d.
    return own->family == AF_INET && peer_hi == 0 && (u32)peer_lo == 0xffff0000 && peer_v4 == own_v4;
}

static __always_inline void connect_exit(s64 ret) {
    u64 id = bpf_get_current_pid_tgid();
    struct pending_connect *p = pending_connect.lookup(&id);
    if (!p)
        return;
    s32 fd = p->role == ROLE_CLIENT ? p->fd : (s32)ret;
    int ok = p->role == ROLE_CLIENT ? (ret == 0 || ret == -EINPROGRESS) : ret >= 0;
    if (ok && fd >= 0) {
        struct conn_info ci = {};
        ci.open_ts = bpf_ktime_get_ns();
        ci.role = p->role;
        ci.listen_fd = p->role == ROLE_SERVER ? p->fd : -1;
        ci.sk = p->sk;
        if (p->sockaddr) {
            u16 family = 0;
            bpf_probe_read_user(&family, sizeof(family), (void *)(p->sockaddr + SOCKADDR_FAMILY_OFF));
            ci.family = family;
            if (family == AF_INET) {
                bpf_probe_read_user(&ci.port, sizeof(ci.port), (void *)(p->sockaddr + SIN_PORT_OFF));
                bpf_probe_read_user(ci.addr, IPV4_ADDR_LEN, (void *)(p->sockaddr + SIN_ADDR_OFF));
            } else if (family == AF_INET6) {
                bpf_probe_read_user(&ci.port, sizeof(ci.port), (void *)(p->sockaddr + SIN6_PORT_OFF));
                bpf_probe_read_user(ci.addr, IPV6_ADDR_LEN, (void *)(p->sockaddr + SIN6_ADDR_OFF));
            }
        }
        u64 key = fd_key(id >> 32, fd);
        if (PLAINTEXT && ci.family == AF_UNIX && p->role == ROLE_CLIENT) {
            // No 4-tuple: the path the client connected to names the connection (the server's side
            // is named from its listening socket, by user space).
            struct unix_path up = {};
            bpf_probe_read_user(up.path, sizeof(up.path), (void *)(p->sockaddr + SUN_PATH_OFF));
            unix_paths.update(&key, &up);
        }
        u32 tgid = id >> 32;
        if ((PLAINTEXT && ignored_tgids.lookup(&tgid)) || (p->role == ROLE_SERVER && peer_is_own(&ci)))
            ci.proto = PROTO_IGNORED;
        else if (PLAINTEXT)
            plain_live_add(tgid, &ci);
        conns.update(&key, &ci);
        if (PLAINTEXT && p->role == ROLE_SERVER && ci.proto != PROTO_IGNORED)
            last_accept.update(&tgid, &fd);
    }
    pending_connect.delete(&id);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) { connect_enter(args->fd, (u64)args->uservaddr, ROLE_CLIENT); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { connect_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { connect_enter(args->fd, (u64)args->upeer_sockaddr, ROLE_SERVER); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { connect_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { connect_enter(args->fd, (u64)args->upeer_sockaddr, ROLE_SERVER); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { connect_exit(args->ret); return 0; }

// A process that accepted a socket and forks: the child inherits the fd and, in a forking server
// (PostgreSQL's postmaster), serves it: from its first read, so it gets the socket's conns entry now.
// Once per accept: the threads and later children a process makes are no part of it.
static __always_inline void plain_fork(u32 parent, u32 child) {
    if (!PLAINTEXT)
        return;
    s32 *fd = last_accept.lookup(&parent);
    if (!fd)
        return;
    s32 accepted = *fd;
    last_accept.delete(&parent);
    u64 pkey = fd_key(parent, accepted);
    struct conn_info *ci = conns.lookup(&pkey);
    if (!ci || ci->proto >= PROTO_TLS)
        return;
    struct conn_info copy = *ci;
    copy.reported = 0;
    copy.plain_announced = 0;
    copy.plain_counted = 0;
    copy.accept_tgid = parent;
    plain_live_add(child, &copy);
    u64 ckey = fd_key(child, accepted);
    conns.update(&ckey, &copy);
}

// close() ends a session: user space hears of it only if it heard of the socket or its SSL*.
TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u64 key = fd_key(tgid, args->fd);
    struct conn_info *ci = conns.lookup(&key);
    u64 *ssl = fd_ssl.lookup(&key);
    if (PLAINTEXT && ci)
        plain_live_done(tgid, ci);
    if (!ssl && !(ci && ci->reported)) {
        if (ci)
            conns.delete(&key);
        return 0;
    }
    struct meta_event m;
    meta_header(&m, EV_CLOSE, tgid, (u32)id, bpf_ktime_get_ns());
    m.fd = args->fd;
    if (ssl) {
        m.ssl = *ssl;
        struct ssl_key k = {.tgid = tgid, .ssl = *ssl};
        ssl_fd.delete(&k);
        positions.delete(&k);
        fd_ssl.delete(&key);
    }
    if (ci) {
        m.role = ci->role;
        m.open_ts = ci->open_ts;
        conns.delete(&key);
    }
    emit_meta(&m);
    return 0;
}

// ================================================================================================
// 10. TCP tracepoints
// ================================================================================================

// connect() moves the socket to SYN_SENT in the caller's context: that names its kernel socket.
// The move to ESTABLISHED (any context) carries the local port chosen meanwhile.
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_SYN_SENT) {
        // connect() runs this on the connecting thread: the port is not chosen yet, the socket is.
        u64 id = bpf_get_current_pid_tgid();
        struct pending_connect *p = pending_connect.lookup(&id);
        if (p)
            p->sk = sk;
        u32 tgid = id >> 32;
        if (ignored_tgids.lookup(&tgid)) {
            u8 one = 1;
            own_sks.update(&sk, &one);
        }
    } else if (args->newstate == TCP_ESTABLISHED) {
        struct sk_tuple t = {};
        t.local_port = args->sport;
        if (args->family == AF_INET)
            __builtin_memcpy(t.local_addr, args->saddr, sizeof(args->saddr));
        else
            __builtin_memcpy(t.local_addr, args->saddr_v6, sizeof(args->saddr_v6));
        sk_tuples.update(&sk, &t);
        if (own_sks.lookup(&sk)) {
            // Before the peer's accept() returns: the client is established first.
            struct own_end own = {.family = args->family};
            __builtin_memcpy(own.addr, t.local_addr, sizeof(own.addr));
            own_ends.update(&t.local_port, &own);
        }
    } else if (args->newstate == TCP_CLOSE) {
        if (own_sks.lookup(&sk)) {
            struct sk_tuple *t = sk_tuples.lookup(&sk);
            if (t)
                own_ends.delete(&t->local_port);
            own_sks.delete(&sk);
        }
        sk_tuples.delete(&sk);
        if (args->oldstate == TCP_LISTEN) {
            u16 port = args->sport;
            listen_ports.delete(&port);
        }
    } else if (args->newstate == TCP_LISTEN) {
        u16 port = args->sport;
        u8 one = 1;
        listen_ports.update(&port, &one);
    }
    return 0;
}

// Data arrived on a TCP socket inside a read of a TLS process: this names the socket's 4-tuple,
// for connections whose connect()/accept() we never saw (opened before we attached, accepted
// by a parent such as PostgreSQL's postmaster) or that gave no address (accept4(fd, NULL, ...)),
// and proves the fd is a socket, so the SSL call in flight can use it.
TRACEPOINT_PROBE(tcp, tcp_rcv_space_adjust) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_tls_tgid(tgid) && !(PLAINTEXT && is_plain_tgid(tgid)))
        return 0;
    struct thread_state *ts = thread_state(0);
    if (!ts || !ts->has_reading_fd)
        return 0;
    s32 fd = ts->reading_fd;
    ts->has_reading_fd = 0;
    u64 key = fd_key(tgid, fd);
    struct conn_info *ci = conns.lookup(&key);
    if (!ci) {
        struct conn_info fresh = {};
        fresh.listen_fd = -1;
        u16 sport = args->sport;
        fresh.role = listen_ports.lookup(&sport) ? ROLE_SERVER : ROLE_CLIENT;
        conns.update(&key, &fresh);
        ci = conns.lookup(&key);
        if (!ci)
            return 0;
    }
    if (!ci->local_port) {
        // A server that speaks first was reported before its socket named its peer: report again.
        int again = ci->reported;
        ci->local_port = args->sport;
        ci->family = args->family;
        ci->port = (args->dport >> 8) | (args->dport << 8);  // the remote port travels in network order
        if (args->family == AF_INET) {
            __builtin_memcpy(ci->local_addr, args->saddr, sizeof(args->saddr));
            __builtin_memcpy(ci->addr, args->daddr, sizeof(args->daddr));
        } else {
            __builtin_memcpy(ci->local_addr, args->saddr_v6, sizeof(args->saddr_v6));
            __builtin_memcpy(ci->addr, args->daddr_v6, sizeof(args->daddr_v6));
        }
        if (again)
            emit_conn(ci, id >> 32, (u32)id, fd, bpf_ktime_get_ns());
    }
    if (ts->in_call && ts->call.fd < 0)
        ts->call.fd = fd;
    return 0;
}

// ================================================================================================
// 11. Process lifecycle
// ================================================================================================

// Section 13: stops the process when it execs a file user space has not judged.
static __always_inline void pause_unknown_exec(u32 tgid, const char *path);

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 id = bpf_get_current_pid_tgid();
    // With --pid or --comm, the rest of the machine's execs are none of our business (its
    // comm is already the new image's here, so --comm matches what was just exec'd).
    if (!allowed(id >> 32))
        return 0;
    struct meta_event m;
    meta_header(&m, EV_EXEC, id >> 32, (u32)id, bpf_ktime_get_ns());
    bpf_get_current_comm(&m.comm, sizeof(m.comm));
    // A new image: whatever this pid did with TLS before exec is gone.
    unmark_tls_tgid(m.tgid);
    // The path it exec'd, for user space to read a binary whose process is gone before it could
    // follow /proc/PID/exe: a Go HTTPS client is done in a few milliseconds.
    struct exec_path path = {};
    bpf_probe_read_kernel_str(path.path, sizeof(path.path), (void *)args + (args->data_loc_filename & 0xFFFF));
    exec_paths.update(&m.tgid, &path);
    if (PAUSE)
        pause_unknown_exec(m.tgid, path.path);
    // Woken at once: user space probes a new static-TLS binary before its first SSL call.
    if (events.ringbuf_output(&m, sizeof(m), BPF_RB_FORCE_WAKEUP) != 0)
        count_loss(LOSS_EVENTS, 1);
    return 0;
}

// A traced process's children are traced from their first instruction: a PostgreSQL backend or a
// pre-forked worker does its TLS handshake before user space could hear of it. The tracepoint does
// not say whether the child is a process or a thread, so a thread's tid is added too; it matches
// no tgid while it lives, and goes when it exits (below).
TRACEPOINT_PROBE(sched, sched_process_fork) {
    plain_fork(bpf_get_current_pid_tgid() >> 32, args->child_pid);
    if (!FILTER || !FOLLOW_FORKS)
        return 0;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!allowed_tgids.lookup(&parent))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    if (allowed_tgids.update(&child, &one) != 0)
        count_loss(LOSS_UNFOLLOWED_FORKS, 1);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (FILTER) {
        u32 task = (u32)id;
        allowed_tgids.delete(&task);
    }
    if ((u32)id != tgid)
        return 0;
    // A process whose sockets were looked at for plaintext ends their connections too: its fds close
    // without close() calls.
    int plain = 0;
    if (PLAINTEXT)
        plain_live.delete(&tgid);
    if (PLAINTEXT && is_plain_tgid(tgid)) {
        unmark_plain_tgid(tgid);
        plain = plain_reported.lookup(&tgid) != 0;
        if (plain)
            plain_reported.delete(&tgid);
    }
    if (!is_tls_tgid(tgid) && !plain)
        return 0;
    unmark_tls_tgid(tgid);
    struct meta_event m;
    meta_header(&m, EV_EXIT, tgid, (u32)id, bpf_ktime_get_ns());
    emit_meta(&m);
    return 0;
}

// ================================================================================================
// 12. Go uprobes
//
// Go's crypto/tls is compiled into each program. The loader puts an entry uprobe on
// crypto/tls.(*Conn).Read and (*Conn).Write and a return uprobe on each of their RET
// instructions (apptrace/capture/gosyms.py finds them): a uretprobe rewrites the return address
// on the stack, and Go moves goroutine stacks, so it would crash the program.
//
// Go's register ABI (1.17+, amd64): the receiver *tls.Conn in RAX, the []byte's pointer and
// length in RBX and RCX; the int result comes back in RAX. The current goroutine (g) is in R14
// throughout Go code: a goroutine that blocks in Read may resume on another thread, so entry and
// return are paired by goroutine, not by thread. An entry seen twice for one call (the stack grew
// and Go re-ran the function's prologue) overwrites the same entry.
// ================================================================================================

enum {
    GO_LAYOUT_SLOTS = 4,     // distinct struct layouts at once; the loader names the one it can't place
    GO_IFACE_DATA_OFF = 8,   // runtime.iface {tab, data}: the data pointer of an interface value
};

// Field offsets of the chain from a *tls.Conn to its socket fd, from the binary's DWARF or,
// for stripped binaries, a table keyed by Go version (gosyms.py).
struct go_layout {
    u32 conn_iface;    // crypto/tls.Conn.conn: the net.Conn interface the TLS records travel on
    u32 netconn_fd;    // net.TCPConn.conn.fd: its *net.netFD
    u32 netfd_sysfd;   // net.netFD.pfd.Sysfd: the descriptor
    u32 pad;
};

// A goroutine in a Read or Write. Built with a designated initializer (pad zeroed: it is hashed).
struct go_key {
    u32 tgid;
    u32 pad;
    u64 g;
};

// key: layout slot; value: struct go_layout, written by the loader before it attaches that slot's probes.
BPF_ARRAY(go_layouts, struct go_layout, GO_LAYOUT_SLOTS);
// key: struct go_key; value: struct active_call, from entry to RET. LRU: a goroutine that panicked
// out of a call never returns through a RET, and its entry ages out.
BPF_TABLE("lru_hash", struct go_key, struct active_call, go_calls, 16384);

// The socket under a *tls.Conn, or -1. Assumes the net.Conn holds a *net.TCPConn (or any
// net type that embeds net.conn: UnixConn, IPConn), as net/http, grpc-go and the SQL drivers dial.
static __always_inline s32 go_conn_fd(u64 tls_conn, struct go_layout *l) {
    u64 conn = 0, netfd = 0;
    s64 sysfd = -1;
    if (bpf_probe_read_user(&conn, sizeof(conn), (void *)(tls_conn + l->conn_iface + GO_IFACE_DATA_OFF)) || !conn)
        return -1;
    if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(conn + l->netconn_fd)) || !netfd)
        return -1;
    if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + l->netfd_sysfd)))
        return -1;
    return sysfd >= 0 && sysfd <= 0x7fffffff ? (s32)sysfd : -1;
}

static __always_inline void go_emit(struct active_call *a, u64 id, s64 n) {
    if (n <= 0)
        return;
    u32 tgid = id >> 32;
    s32 fd = a->fd;
    u32 flags = 0;
    if (fd >= 0) {
        bind_fd(tgid, a->ssl, fd);  // close() then ends the session (fd_ssl)
        int known = report_conn(tgid, (u32)id, fd, 0);
        if (known < 0)
            return;  // a peer of apptrace's own
        if (!known)
            flags = FLAG_LOOK;
    }
    emit_data(a, id, (u64)n, fd, fd >= 0 ? FD_CONN_STRUCT : FD_NONE, flags);
}

// A Write's plaintext is whole in its buffer at entry, and Go's Write sends all of it or fails the
// connection: it is recorded there. At its RET it could come too late or never: after another
// goroutine closed the socket, or not at all when the program exits (os.Exit) while the writing
// goroutine, its bytes already sent and answered, waits to run again. A Read's bytes exist only at RET.
static __always_inline int go_enter(struct pt_regs *ctx, u8 dir, u32 slot) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!allowed(tgid))
        return 0;
    struct go_layout *l = go_layouts.lookup(&slot);
    if (!l)
        return 0;
    struct active_call c = {};
    c.start_ts = dir == DIR_EGRESS ? bpf_ktime_get_ns() : 0;  // a read is stamped when it returns
    c.ssl = ctx->ax;
    c.buf = ctx->bx;
    c.fd = go_conn_fd(c.ssl, l);
    c.dir = dir;
    c.tls_lib = TLS_LIB_GO;
    struct go_key k = {.tgid = tgid, .g = ctx->r14};
    if (dir == DIR_EGRESS) {
        struct active_call *prev = go_calls.lookup(&k);
        if (prev && prev->ssl == c.ssl && prev->buf == c.buf && prev->dir == DIR_EGRESS)
            return 0;  // the same Write re-entered after growing its stack: already sent
    }
    if (go_calls.update(&k, &c) != 0) {
        count_loss(LOSS_CALLS, 1);
        return 0;
    }
    announce_tgid(tgid, id);
    if (dir == DIR_EGRESS)
        go_emit(&c, id, (s64)ctx->cx);
    return 0;
}

int probe_go_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    struct go_key k = {.tgid = tgid, .g = ctx->r14};
    struct active_call *a = go_calls.lookup(&k);
    if (!a)
        return 0;
    if (a->dir == DIR_INGRESS)
        go_emit(a, id, (s64)ctx->ax);  // Read returns (n int, err error): n moved even with an error
    go_calls.delete(&k);
    return 0;
}

// The loader attaches probe_go_<read|write>_enter_<slot>, the slot holding the binary's layout.
#define DEFINE_GO_PROBES(slot)                                                                       \
    int probe_go_write_enter_##slot(struct pt_regs *ctx) { return go_enter(ctx, DIR_EGRESS, slot); } \
    int probe_go_read_enter_##slot(struct pt_regs *ctx) { return go_enter(ctx, DIR_INGRESS, slot); }

DEFINE_GO_PROBES(0)
DEFINE_GO_PROBES(1)
DEFINE_GO_PROBES(2)
DEFINE_GO_PROBES(3)

// ================================================================================================
// 13. Pausing a process until its TLS library is probed
//
// A uprobe registered on a file before the loader maps it is in place from the mapping's first
// instruction; a library found by a rescan after the process started is not. So a process that
// opens a libssl* file user space has not judged yet, or execs a file it has not judged yet (a
// static or Go binary), is stopped (SIGSTOP from the syscall's exit, before it returns to user
// space) and reported on its own ring. User space probes the file and sends SIGCONT; its watchdog
// process (apptrace/capture/pause_watchdog.py) continues, from the `paused` map, every process
// stopped longer than the bound, and all of them when capture dies. Known paths (`known_paths`,
// filled by user space with every file it has judged and every file it attached at start) are
// never paused for, so a process whose TLS library is the system's pays nothing but a lookup.
// ================================================================================================

enum { PAUSE_PATH_LEN = 256, SIGSTOP_NUM = 19 };
enum pause_reason { PAUSE_OPEN = 1, PAUSE_EXEC = 2 };

// A file as a process named it, in its view: ns 0 for the tracer's pid namespace, else the
// caller's cgroup id (a container: the same path there may name another file). The path is
// zero-padded: the map hashes every byte.
struct pause_key {
    u64 ns;
    char path[PAUSE_PATH_LEN];
};

// A stopped process, on pause_events (decoded by apptrace/capture/pause.py; never spooled).
struct pause_event {
    u32 tgid;
    s32 fd;        // PAUSE_OPEN: the descriptor the libssl file was opened on; -1 for PAUSE_EXEC
    u32 reason;    // enum pause_reason
    u32 stopped;   // 1 when the SIGSTOP was sent (0: the kernel refused; user space still probes)
    u64 ts;        // bpf_ktime_get_ns() of the stop, as in `paused`
    struct pause_key key;
};

BPF_RINGBUF_OUTPUT(pause_events, 16);
// key: struct pause_key; value: u8 1. Files user space has judged (probed, or nothing to probe).
BPF_TABLE("lru_hash", struct pause_key, u8, known_paths, 16384);
// key: u32 tgid; value: u64 ktime of its stop. Deleted by whoever continues it (capture or watchdog).
BPF_HASH(paused, u32, u64, 4096);
// key: u32 tgid never to stop: the tracer, its analysis and watchdog processes.
BPF_HASH(pause_exempt, u32, u8, 16);
// key: u64 pid_tgid of a thread inside openat() of an unknown libssl* path; value: that path. LRU, as
// pending_connect: a thread killed inside openat() never reaches its exit.
BPF_TABLE("lru_hash", u64, struct pause_key, pause_opening, 1024);
// key: 0; value: a pause_event being built (too big for the BPF stack).
BPF_PERCPU_ARRAY(pause_scratch, struct pause_event, 1);
enum pause_mode { PAUSE_OFF = 0, PAUSE_STOP = 1, PAUSE_REPORT = 2 };
// key: 0; value: enum pause_mode. PAUSE_STOP while user space and its watchdog are there to
// continue what is stopped: set after both are ready, cleared before capture detaches.
// PAUSE_REPORT (--no-pause): unknown libssl opens are reported, never stopped, so that user
// space probes them late and names the process as possibly missed.
BPF_ARRAY(pause_on, u32, 1);

static __always_inline u32 pausing(void) {
    u32 zero = 0;
    u32 *on = pause_on.lookup(&zero);
    return PAUSE && on ? *on : PAUSE_OFF;
}

static __always_inline u64 pause_ns(void) {
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(HOST_PIDNS_DEV, HOST_PIDNS_INO, &ns, sizeof(ns)) == 0)
        return 0;
    return bpf_get_current_cgroup_id();
}

// Stop the calling process and tell user space which file to probe.
static __always_inline void pause_process(u32 tgid, s32 fd, u32 reason, struct pause_key *key) {
    u32 zero = 0;
    struct pause_event *e = pause_scratch.lookup(&zero);
    if (!e)
        return;
    e->tgid = tgid;
    e->fd = fd;
    e->reason = reason;
    e->ts = bpf_ktime_get_ns();
    if (key != &e->key)
        __builtin_memcpy(&e->key, key, sizeof(e->key));
    e->stopped = 0;
    if (pausing() == PAUSE_STOP) {
        // In `paused` before the signal: the watchdog must know of every stopped process.
        paused.update(&tgid, &e->ts);
        e->stopped = bpf_send_signal(SIGSTOP_NUM) == 0;
        if (!e->stopped)
            paused.delete(&tgid);
    }
    // Lost (ring full): the process is continued by the watchdog when the bound passes.
    if (pause_events.ringbuf_output(e, sizeof(*e), BPF_RB_FORCE_WAKEUP) != 0)
        count_loss(LOSS_EVENTS, 1);
}

static __always_inline int pause_exempt_tgid(u32 tgid) {
    return pause_exempt.lookup(&tgid) != 0 || !allowed(tgid);
}

// openat() entry: a path with a component starting "libssl" (OpenSSL's and BoringSSL's libssl.so*)
// that user space has not judged marks the thread; the exit stops it if the open succeeded.
static __always_inline void pause_check_open(const char *filename) {
    u32 zero = 0;
    struct pause_event *e = pause_scratch.lookup(&zero);
    if (!e)
        return;
    int n = bpf_probe_read_user_str(e->key.path, sizeof(e->key.path), filename);
    if (n <= 0)
        return;
    int found = 0;
    // A loop carrying the last '/' index fails the verifier (E2BIG); this looks at every offset.
    for (u32 i = 0; i < PAUSE_PATH_LEN - 7; i++) {
        if (i + 7 > n)
            break;
        char *p = &e->key.path[i];
        if (p[0] == '/' && p[1] == 'l' && p[2] == 'i' && p[3] == 'b' && p[4] == 's' && p[5] == 's' && p[6] == 'l') {
            found = 1;
            break;
        }
    }
    if (!found)
        return;
    u64 id = bpf_get_current_pid_tgid();
    if (pause_exempt_tgid(id >> 32))
        return;
    // Read again into a zeroed key: the bytes past the string are hashed too.
    __builtin_memset(&e->key, 0, sizeof(e->key));
    if (bpf_probe_read_user_str(e->key.path, sizeof(e->key.path), filename) <= 0)
        return;
    e->key.ns = pause_ns();
    if (known_paths.lookup(&e->key))
        return;
    pause_opening.update(&id, &e->key);
}

static __always_inline void pause_check_open_exit(long ret) {
    if (!PAUSE)
        return;
    u64 id = bpf_get_current_pid_tgid();
    struct pause_key *key = pause_opening.lookup(&id);
    if (!key)
        return;
    if (ret >= 0)
        pause_process(id >> 32, (s32)ret, PAUSE_OPEN, key);
    pause_opening.delete(&id);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) { if (pausing()) pause_check_open(args->filename); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { pause_check_open_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_openat2) { if (pausing()) pause_check_open(args->filename); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { pause_check_open_exit(args->ret); return 0; }
#ifdef APPTRACE_HAS_SYS_OPEN
TRACEPOINT_PROBE(syscalls, sys_enter_open) { if (pausing()) pause_check_open(args->filename); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { pause_check_open_exit(args->ret); return 0; }
#endif

// sched_process_exec: a file user space has not judged is probed before its first instruction.
static __always_inline void pause_unknown_exec(u32 tgid, const char *path) {
    if (pausing() != PAUSE_STOP || pause_exempt_tgid(tgid))
        return;
    u32 zero = 0;
    struct pause_event *e = pause_scratch.lookup(&zero);
    if (!e)
        return;
    __builtin_memcpy(e->key.path, path, PAUSE_PATH_LEN);
    e->key.ns = pause_ns();
    if (known_paths.lookup(&e->key))
        return;
    pause_process(tgid, -1, PAUSE_EXEC, &e->key);
}
