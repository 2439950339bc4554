// apptrace capture program: TLS plaintext from SSL_read/SSL_write[_ex] uprobes, tied to sockets.
//
// Only <uapi/linux/ptrace.h> is included: the machines we run on may compile against
// another kernel's headers, and kernel-internal headers from another version break.
//
// Placeholders filled in by apptrace/loader.py:
//   __MAX_CHUNK__   bytes copied per ring-buffer record (power of two)
//   __MAX_CHUNKS__  records per SSL call; bytes past MAX_CHUNK*MAX_CHUNKS become an explicit gap
//   __WAKE_BYTES__  wake user space after this many bytes of records per CPU (batched wake-ups)
//   __FILTER__      1 when --pid/--comm restrict tracing
//   __RINGBUF_PAGES__ ring buffer size in pages
#include <uapi/linux/ptrace.h>

#define MAX_CHUNK __MAX_CHUNK__
#define MAX_CHUNKS __MAX_CHUNKS__
#define WAKE_BYTES __WAKE_BYTES__
#define FILTER __FILTER__
#define TGID_WORDS __TGID_WORDS__

#define RB_NO_WAKEUP 1
#define RB_FORCE_WAKEUP 2
#define EINPROGRESS 115

enum event_type { EV_DATA = 1, EV_BIND = 2, EV_CONN = 3, EV_CLOSE = 4, EV_EXEC = 5, EV_EXIT = 6, EV_TGID = 7 };
// data_event.flags. User space copies runs of unflagged data records to disk without looking
// at each one: a record it must look at (to read /proc while the socket lives) says so.
#define FLAG_LOOK 1
enum fd_source { FD_NONE = 0, FD_NESTED = 1, FD_SSLMAP = 2, FD_PRIOR_READ = 3 };
enum direction { DIR_EGRESS = 0, DIR_INGRESS = 1 };
enum role { ROLE_UNKNOWN = 0, ROLE_CLIENT = 1, ROLE_SERVER = 2 };
enum loss_kind {
    LOSS_EVENTS = 0,        // ring buffer full: records dropped
    LOSS_BYTES = 1,         // ... and the plaintext bytes they carried
    LOSS_TRUNCATED = 2,     // bytes past MAX_CHUNKS*MAX_CHUNK in one call (a gap, not a drop)
    LOSS_CALLS = 3,         // SSL calls not tracked because the in-flight map was full
    LOSS_READ_FAULTS = 4,   // bpf_probe_read_user failed (page not present)
    LOSS_KINDS = 5,
};

// Layout shared with apptrace/events.py. Keep both in sync.
struct data_event {
    u8 type;
    u8 dir;
    u8 fd_source;
    u8 tls_lib;
    u32 tgid;
    u32 tid;
    s32 fd;
    u64 ts;
    u64 ssl;
    u64 pos;       // stream position of this call's first byte: lost records show as gaps
    u32 orig_len;  // bytes the SSL call moved
    u32 offset;    // where this chunk starts within the call
    u32 len;       // bytes of plaintext in this record
    u32 flags;     // FLAG_LOOK: a socket the kernel has no connection for, or a tgid past the bitmap
    char data[MAX_CHUNK];
};
#define DATA_HDR_SIZE 56

struct meta_event {
    u8 type;
    u8 pad[3];
    u32 tgid;
    u32 tid;
    s32 fd;
    u64 ts;
    u64 ssl;       // EV_BIND, EV_CLOSE
    u64 open_ts;   // EV_CONN, EV_CLOSE
    u32 role;      // EV_CONN, EV_CLOSE
    u16 family;    // remote address from connect()/accept() arguments
    u16 port;      // network byte order
    u8 addr[16];
    char comm[16]; // EV_EXEC
    s32 listen_fd; // EV_CONN of an accepted socket: its local address is the listener's
    u16 local_port;   // EV_CONN of a connected socket: from the TCP state change, host order
    u16 pad2;
    u8 local_addr[16];
};

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
};

struct task_struct;

struct ssl_key {
    u32 tgid;
    u32 pad;
    u64 ssl;
};

struct sk_tuple {
    u16 local_port;
    u16 pad;
    u8 local_addr[16];
};

struct stream_pos {
    u64 pos[2];
};

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
    u8 pad;
    u8 local_addr[16];
};

struct pending_connect {
    u64 sockaddr;
    u64 sk;
    s32 fd;  // connect: the socket; accept: the listening socket
    u32 role;
};

BPF_RINGBUF_OUTPUT(events, __RINGBUF_PAGES__);
BPF_PERCPU_ARRAY(scratch, struct data_event, 1);
BPF_PERCPU_ARRAY(losses, u64, LOSS_KINDS);
BPF_PERCPU_ARRAY(unwoken_bytes, u64, 1);

BPF_TASK_STORAGE(threads, struct thread_state);
// (tgid, SSL*) -> socket fd, and back: the fallback for SSL calls that make no syscall
BPF_TABLE("lru_hash", struct ssl_key, s32, ssl_fd, 65536);
BPF_TABLE("lru_hash", u64, u64, fd_ssl, 65536);
// (tgid, SSL*) -> plaintext bytes so far each way: lost records show up as position gaps
BPF_TABLE("lru_hash", struct ssl_key, struct stream_pos, positions, 65536);
// One bit per tgid that has made SSL calls: only their socket I/O is worth a look. The socket
// syscall tracepoints fire for every process on the machine (the load generator, the untraced
// servers), and this test, an array lookup the verifier inlines, is all those pay: a hash
// lookup here cost ~200 ns per read() and write() machine-wide.
BPF_ARRAY(tls_tgid_bits, u64, TGID_WORDS);
// (tgid<<32|fd) -> how the socket was opened (connect or accept)
BPF_TABLE("lru_hash", u64, struct conn_info, conns, 65536);
BPF_HASH(pending_connect, u64, struct pending_connect, 4096);
// kernel socket -> its local address once established: a short-lived client may be gone
// before user space could read /proc, so the kernel keeps it.
BPF_TABLE("lru_hash", u64, struct sk_tuple, sk_tuples, 65536);
// local ports in LISTEN state: an unknown socket on one of them is the server side
BPF_TABLE("lru_hash", u16, u8, listen_ports, 4096);
BPF_HASH(allowed_tgids, u32, u8, 1024);
struct comm_key {
    char c[16];
};
BPF_HASH(allowed_comms, struct comm_key, u8, 64);

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
        return RB_FORCE_WAKEUP;
    *n += size;
    if (*n < WAKE_BYTES)
        return RB_NO_WAKEUP;
    *n = 0;
    return RB_FORCE_WAKEUP;
}

static __always_inline void emit_meta(struct meta_event *m) {
    if (events.ringbuf_output(m, sizeof(*m), wake_flag(sizeof(*m))) != 0)
        count_loss(LOSS_EVENTS, 1);
}

static __always_inline void emit_conn(struct conn_info *ci, u32 tgid, u32 tid, s32 fd, u64 ts) {
    struct meta_event m = {};
    m.type = EV_CONN;
    m.ts = ts;
    m.tgid = tgid;
    m.tid = tid;
    m.fd = fd;
    m.role = ci->role;
    m.open_ts = ci->open_ts;
    m.listen_fd = ci->listen_fd;
    if (ci->local_port) {
        m.local_port = ci->local_port;
        __builtin_memcpy(m.local_addr, ci->local_addr, 16);
    } else if (ci->sk) {
        struct sk_tuple *t = sk_tuples.lookup(&ci->sk);
        if (t) {
            m.local_port = t->local_port;
            __builtin_memcpy(m.local_addr, t->local_addr, 16);
        }
    }
    m.family = ci->family;
    m.port = ci->port;
    __builtin_memcpy(m.addr, ci->addr, 16);
    // Forked processes (PostgreSQL backends) never exec: the kernel's comm names them even
    // when they are gone before user space reads /proc.
    bpf_get_current_comm(&m.comm, sizeof(m.comm));
    // Wake user space now: it reads what the kernel did not say from /proc while the socket lives.
    if (events.ringbuf_output(&m, sizeof(m), RB_FORCE_WAKEUP) != 0) {
        count_loss(LOSS_EVENTS, 1);
        // User space copies this socket's data unread from now on: only this event tells it
        // about the socket, so the next data call on it tries again.
        ci->reported = 0;
    }
}

// First data on a socket: tell user space how it was opened (role, addresses), in order, before the data.
// ts 0: now (read only when there is something to report: this runs on every data call).
// Returns 0 when the kernel knows no connection on this fd: user space must look at it.
static __always_inline int report_conn(u32 tgid, u32 tid, s32 fd, u64 ts) {
    u64 key = ((u64)tgid << 32) | (u32)fd;
    struct conn_info *ci = conns.lookup(&key);
    if (!ci)
        return 0;
    if (!ci->reported) {
        ci->reported = 1;
        emit_conn(ci, tgid, tid, fd, ts ? ts : bpf_ktime_get_ns());
    }
    return 1;
}

static __always_inline void bind_fd(u32 tgid, u64 ssl, s32 fd) {
    struct ssl_key k = {.tgid = tgid, .ssl = ssl};
    s32 *known = ssl_fd.lookup(&k);
    if (known && *known == fd)
        return;
    ssl_fd.update(&k, &fd);
    u64 fkey = ((u64)tgid << 32) | (u32)fd;
    fd_ssl.update(&fkey, &ssl);
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
    if (mark_tls_tgid(tgid)) {
        // Ahead of its data in the ring: user space describes the process from /proc (once),
        // instead of checking every data record for a process it has not seen.
        struct meta_event m = {};
        m.type = EV_TGID;
        m.ts = bpf_ktime_get_ns();
        m.tgid = tgid;
        m.tid = (u32)id;
        bpf_get_current_comm(&m.comm, sizeof(m.comm));
        if (events.ringbuf_output(&m, sizeof(m), RB_FORCE_WAKEUP) != 0) {
            count_loss(LOSS_EVENTS, 1);
            unmark_tls_tgid(tgid);  // the next SSL call announces the process again
        }
    }
    return 0;
}

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
        u32 flags = 0;
        if (fd >= 0 && !report_conn(tgid, (u32)id, fd, 0))
            flags = FLAG_LOOK;
        emit_data(a, id, total, fd, src, flags);
    }
    ts->in_call = 0;
    return 0;
}

#define DEFINE_TLS_PROBES(lib, lib_id)                                                               \
    int probe_##lib##_write_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_EGRESS, 0, lib_id); } \
    int probe_##lib##_read_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_INGRESS, 0, lib_id); } \
    int probe_##lib##_write_ex_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_EGRESS, 1, lib_id); } \
    int probe_##lib##_read_ex_enter(struct pt_regs *ctx) { return call_enter(ctx, DIR_INGRESS, 1, lib_id); }

DEFINE_TLS_PROBES(openssl, 1)
DEFINE_TLS_PROBES(boringssl, 2)

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

// Socket I/O: tells which fd an SSL call (or the call just before/after it) used.
static __always_inline void on_socket_io(s32 fd, int is_read) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    // Only sockets this process connected or accepted (or that user space found open at start)
    // may stand for a TLS session: SSL calls and the code around them also read files
    // (node reads tzdata while verifying a certificate), eventfds and pipes.
    if (!is_tls_tgid(tgid))  // an SSL call in flight marked it already
        return;
    u64 fkey = ((u64)tgid << 32) | (u32)fd;
    struct thread_state *ts = thread_state(0);
    int in_call = ts && ts->in_call;
    struct conn_info *ci = conns.lookup(&fkey);
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
    struct meta_event m = {};
    m.type = EV_BIND;
    m.ts = bpf_ktime_get_ns();
    m.ssl = ssl;
    m.tgid = tgid;
    m.tid = (u32)id;
    m.fd = fd;
    bind_fd(tgid, ssl, fd);
    report_conn(tgid, (u32)id, fd, m.ts);
    emit_meta(&m);
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) { on_socket_io(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { on_socket_io(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { on_socket_io(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { on_socket_io(args->fd, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { on_socket_io(args->fd, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { on_socket_io(args->fd, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { on_socket_io(args->fd, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { on_socket_io(args->fd, 0); return 0; }

// Connection lifecycle: connect() makes a client, accept() a server. Kept in a map, reported
// only when TLS data first flows on the fd, so untraced processes cost no events.
static __always_inline void connect_enter(s32 fd, u64 sockaddr, u32 role) {
    u64 id = bpf_get_current_pid_tgid();
    if (!allowed(id >> 32))
        return;
    struct pending_connect p = {.sockaddr = sockaddr, .fd = fd, .role = role};
    pending_connect.update(&id, &p);
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
            bpf_probe_read_user(&family, sizeof(family), (void *)p->sockaddr);
            ci.family = family;
            if (family == 2) {  // AF_INET: port at 2, address at 4
                bpf_probe_read_user(&ci.port, 2, (void *)(p->sockaddr + 2));
                bpf_probe_read_user(ci.addr, 4, (void *)(p->sockaddr + 4));
            } else if (family == 10) {  // AF_INET6: port at 2, address at 8
                bpf_probe_read_user(&ci.port, 2, (void *)(p->sockaddr + 2));
                bpf_probe_read_user(ci.addr, 16, (void *)(p->sockaddr + 8));
            }
        }
        u64 key = (id & 0xffffffff00000000ULL) | (u32)fd;
        conns.update(&key, &ci);
    }
    pending_connect.delete(&id);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) { connect_enter(args->fd, (u64)args->uservaddr, ROLE_CLIENT); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { connect_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { connect_enter(args->fd, (u64)args->upeer_sockaddr, ROLE_SERVER); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { connect_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { connect_enter(args->fd, (u64)args->upeer_sockaddr, ROLE_SERVER); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { connect_exit(args->ret); return 0; }

// connect() moves the socket to SYN_SENT in the caller's context: that names its kernel socket.
// The move to ESTABLISHED (any context) carries the local port chosen meanwhile.
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6)  // IPPROTO_TCP
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == 2) {  // TCP_SYN_SENT
        u64 id = bpf_get_current_pid_tgid();
        struct pending_connect *p = pending_connect.lookup(&id);
        if (p)
            p->sk = sk;
    } else if (args->newstate == 1) {  // TCP_ESTABLISHED
        struct sk_tuple t = {};
        t.local_port = args->sport;
        if (args->family == 2)
            __builtin_memcpy(t.local_addr, args->saddr, 4);
        else
            __builtin_memcpy(t.local_addr, args->saddr_v6, 16);
        sk_tuples.update(&sk, &t);
    } else if (args->newstate == 7) {  // TCP_CLOSE
        sk_tuples.delete(&sk);
        if (args->oldstate == 10) {
            u16 port = args->sport;
            listen_ports.delete(&port);
        }
    } else if (args->newstate == 10) {  // TCP_LISTEN
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
    if (!is_tls_tgid(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct thread_state *ts = thread_state(0);
    if (!ts || !ts->has_reading_fd)
        return 0;
    s32 fd = ts->reading_fd;
    ts->has_reading_fd = 0;
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | (u32)fd;
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
        if (args->family == 2) {
            __builtin_memcpy(ci->local_addr, args->saddr, 4);
            __builtin_memcpy(ci->addr, args->daddr, 4);
        } else {
            __builtin_memcpy(ci->local_addr, args->saddr_v6, 16);
            __builtin_memcpy(ci->addr, args->daddr_v6, 16);
        }
        if (again)
            emit_conn(ci, id >> 32, (u32)id, fd, bpf_ktime_get_ns());
    }
    if (ts->in_call && ts->call.fd < 0)
        ts->call.fd = fd;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u64 key = ((u64)tgid << 32) | (u32)args->fd;
    struct conn_info *ci = conns.lookup(&key);
    u64 *ssl = fd_ssl.lookup(&key);
    if (!ssl && !(ci && ci->reported)) {
        if (ci)
            conns.delete(&key);
        return 0;
    }
    struct meta_event m = {};
    m.type = EV_CLOSE;
    m.ts = bpf_ktime_get_ns();
    m.tgid = tgid;
    m.tid = (u32)id;
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

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 id = bpf_get_current_pid_tgid();
    // With --pid or --comm, the rest of the machine's execs are none of our business (its
    // comm is already the new image's here, so --comm matches what was just exec'd).
    if (!allowed(id >> 32))
        return 0;
    struct meta_event m = {};
    m.type = EV_EXEC;
    m.ts = bpf_ktime_get_ns();
    m.tgid = id >> 32;
    m.tid = (u32)id;
    bpf_get_current_comm(&m.comm, sizeof(m.comm));
    // A new image: whatever this pid did with TLS before exec is gone.
    unmark_tls_tgid(m.tgid);
    events.ringbuf_output(&m, sizeof(m), RB_FORCE_WAKEUP);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid || !is_tls_tgid(tgid))
        return 0;
    unmark_tls_tgid(tgid);
    struct meta_event m = {};
    m.type = EV_EXIT;
    m.ts = bpf_ktime_get_ns();
    m.tgid = tgid;
    m.tid = (u32)id;
    emit_meta(&m);
    return 0;
}
