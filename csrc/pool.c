/* pool.c -- the threads of the C backend: a small pool of its own, no OpenMP runtime.
 *
 * fs_parallel(task, ctx, T) runs task(ctx, t, T) for t = 0 .. T-1: the calling thread
 * runs t = 0, pool workers the rest.  Between jobs a worker spins for at most
 * SPIN_NS (a few tens of microseconds: long enough to bridge the gaps between the
 * kernels of a training step) and then sleeps on a futex, so it never holds a core
 * that another thread pool (NumPy's BLAS) or another process needs for longer than
 * that.  It spins only while the jobs come that close together: when the last gap
 * between two jobs was longer (the caller does other work between them, such as a
 * NumPy product), it sleeps at once.  A spin there would be wasted, and it would cost
 * more than its own time: the scheduler lets a thread that has just used its core
 * wait longer to get it back, so the next job would start late.  fs_barrier() inside a
 * task synchronizes the T threads of the job by spinning briefly, then sleeping.
 *
 * Where the workers run: a worker woken for a job on the CPU where the job's caller
 * runs would only take turns with it.  That happens when every other CPU is busy at
 * the wake, for instance with NumPy's BLAS threads, which spin for a while after each
 * of its calls: the scheduler then puts the woken worker beside the caller.  A worker
 * that finds itself there moves to the process's other CPUs (its affinity: the CPUs
 * the pool started on, less the caller's), where it gets a share of the spinning
 * thread's core.
 *
 * One job runs on the pool at a time; a second caller arriving meanwhile (another
 * Python thread) runs its job alone, on its own thread, instead of waiting.
 *
 * Sharing the cores: the caller of each job adds up how long it worked and how long
 * it was blocked (joining, or at a barrier).  When over WINDOW_NS of its time it was
 * blocked for more than half its work, the workers were held up, by another
 * process on their cores (or a busy NumPy pool), and waiting for them at every join is
 * what turns a busy core into a collapse.  The pool then runs jobs on the caller's
 * thread alone for a while: SOLO_MIN_NS at first, doubled while the workers stay held
 * up (up to SOLO_MAX_NS), and threaded again after a window where they keep pace.  One
 * held-up window after windows where they kept pace is taken for a hiccup (a worker's
 * core lent elsewhere for a moment), and only a second in a row starts that: in the
 * epoch bench, beside the other runners' idle processes, single windows had sent the
 * c epoch to one thread 0-8 times in 5 epochs (bs 64 p10-p90 83.6-97.6 ms; then none
 * in two runs, 83.2 and 83.7 ms), while a busy second core costs the c epoch 2.0x
 * instead of 1.9x.  The split of a job does not change its results, so neither does
 * this.
 * After fork() the child has none of the parent's workers: a pthread_atfork handler
 * forgets them, and the child's first parallel job starts new ones.
 */
#define _GNU_SOURCE /* syscall, sched_getaffinity */

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

enum { MAX_THREADS = 256 };
#define SPIN_NS 50000           /* 50 us */
#define WINDOW_NS 2000000       /* the caller's time over which the threads are judged */
#define HELD_UP_FRACTION 2      /* held up: blocked for more than half the work */
#define SOLO_MIN_NS 5000000     /* 5 ms */
#define SOLO_MAX_NS 40000000    /* 40 ms: threads are tried again soon after a burst */

/* -------------------------------------------------------------- waiting */

static void futex_wait(atomic_int *word, int expected)
{
    syscall(SYS_futex, (int *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(atomic_int *word)
{
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Returns once *word != value: spins up to SPIN_NS, then sleeps on the futex.
 * *sleepers counts the threads that may be asleep on word, so wakers skip the
 * system call when nobody sleeps. */
static void wait_while_equal(atomic_int *word, int value, atomic_int *sleepers,
                             int64_t spin_ns)
{
    const int64_t deadline = now_ns() + spin_ns;
    for (int i = 0; atomic_load_explicit(word, memory_order_acquire) == value; i++) {
        cpu_relax();
        if ((i & 63) == 63 && now_ns() > deadline) {
            atomic_fetch_add(sleepers, 1);
            while (atomic_load_explicit(word, memory_order_acquire) == value)
                futex_wait(word, value);
            atomic_fetch_sub(sleepers, 1);
            return;
        }
    }
}

/* Stores value into *word and wakes whoever sleeps on it. */
static void publish(atomic_int *word, int value, atomic_int *sleepers)
{
    atomic_store(word, value); /* sequentially consistent: not reordered with the load */
    if (atomic_load(sleepers) > 0)
        futex_wake_all(word);
}

/* ------------------------------------------------------------------ pool */

static struct {
    pthread_mutex_t lock; /* held by the thread whose job runs on the pool */
    int workers;          /* started so far (threads 1 .. workers) */
    atomic_int generation; /* bumped for each job */
    atomic_int pending;    /* workers not done with the current job yet */
    atomic_int sleepers_job, sleepers_done;
    fs_task task;
    void *ctx;
    int T;
    int caller_cpu;        /* the CPU the current job's caller ran on when it posted it */
    atomic_llong between_jobs_spin_ns; /* how long a worker spins for the next job */
    int64_t last_job_end_ns;
    cpu_set_t cpus;        /* the CPUs the pool started on */
    int start_generation[MAX_THREADS]; /* per worker: the generation when it started */
    /* barrier */
    atomic_int bar_count, bar_phase, sleepers_bar;
    /* sharing the cores (read and written under lock, or by the job's caller) */
    int64_t caller_blocked_ns; /* the caller's time at barriers in the current job */
    int64_t window_work_ns, window_blocked_ns; /* the caller's, since the last verdict */
    int held_up_once; /* the last window was held up, after threads that paid */
    int64_t solo_until_ns, solo_ns;
    atomic_llong stalls;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local int in_pool_job; /* this thread runs (part of) a pool job */
static _Thread_local int is_job_caller; /* ... and is the thread that started it */

/* Whether jobs run on the caller alone now (the workers were held up); under lock. */
static int running_solo(int64_t now)
{
    return now < pool.solo_until_ns;
}

/* After a threaded job: the caller worked `work` ns and was blocked `blocked` ns. */
static void note_join(int64_t work, int64_t blocked, int64_t now)
{
    pool.window_work_ns += work;
    pool.window_blocked_ns += blocked;
    if (pool.window_work_ns + pool.window_blocked_ns < WINDOW_NS)
        return;
    const int held_up = pool.window_blocked_ns > pool.window_work_ns / HELD_UP_FRACTION;
    pool.window_work_ns = pool.window_blocked_ns = 0;
    if (!held_up) {
        pool.solo_ns = 0; /* the threads pay: the cores are ours */
        pool.held_up_once = 0;
        return;
    }
    if (pool.solo_ns == 0 && !pool.held_up_once) {
        pool.held_up_once = 1; /* one window alone may be a hiccup: judge the next */
        return;
    }
    pool.held_up_once = 0;
    atomic_fetch_add(&pool.stalls, 1);
    const int64_t doubled = 2 * pool.solo_ns;
    pool.solo_ns = pool.solo_ns == 0 ? SOLO_MIN_NS : doubled < SOLO_MAX_NS ? doubled : SOLO_MAX_NS;
    pool.solo_until_ns = now + pool.solo_ns;
}

/* A worker on the CPU of the job's caller moves to the pool's other CPUs (see the top). */
static void step_aside(int caller_cpu)
{
    if (caller_cpu < 0 || sched_getcpu() != caller_cpu)
        return;
    cpu_set_t others = pool.cpus;
    CPU_CLR(caller_cpu, &others);
    if (CPU_COUNT(&others) > 0)
        pthread_setaffinity_np(pthread_self(), sizeof others, &others);
}

static void *worker_main(void *arg)
{
    const int id = (int)(intptr_t)arg;
    int seen = pool.start_generation[id]; /* the jobs after it are this worker's */
    in_pool_job = 1;
    for (;;) {
        wait_while_equal(&pool.generation, seen, &pool.sleepers_job,
                         atomic_load_explicit(&pool.between_jobs_spin_ns, memory_order_relaxed));
        seen = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (id < pool.T) {
            step_aside(pool.caller_cpu);
            pool.task(pool.ctx, id, pool.T);
        }
        /* Every worker reports, also one with no part, so none is still between jobs
         * (reading pool.T) when the next job is set up. */
        if (atomic_fetch_sub(&pool.pending, 1) == 1 && atomic_load(&pool.sleepers_done))
            futex_wake_all(&pool.pending);
    }
    return NULL;
}

/* Starts workers until there are `want`; returns how many there are. */
static int grow_pool(int want)
{
    if (pool.workers == 0 && sched_getaffinity(0, sizeof pool.cpus, &pool.cpus) != 0)
        CPU_ZERO(&pool.cpus); /* unknown: no worker steps aside */
    while (pool.workers < want) {
        pthread_attr_t attr;
        pthread_t thread;
        pool.start_generation[pool.workers + 1] = atomic_load(&pool.generation);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int ok = pthread_create(&thread, &attr, worker_main,
                                      (void *)(intptr_t)(pool.workers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok)
            break;
        pool.workers++;
    }
    return pool.workers;
}

int64_t pool_stalls(void) { return (int64_t)atomic_load(&pool.stalls); }

/* Back to judging the threads afresh (under lock, or with no other thread). */
static void forget_sharing(void)
{
    pool.solo_until_ns = pool.solo_ns = pool.window_work_ns = pool.window_blocked_ns = 0;
    pool.held_up_once = 0;
}

void fs_forget_stalls(void)
{
    pthread_mutex_lock(&pool.lock);
    forget_sharing();
    pthread_mutex_unlock(&pool.lock);
}

static void before_fork(void) { pthread_mutex_lock(&pool.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&pool.lock); }

/* The child has only the forking thread: forget the workers, start afresh. */
static void after_fork_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pool.workers = 0;
    forget_sharing();
    atomic_store(&pool.pending, 0);
    atomic_store(&pool.sleepers_job, 0);
    atomic_store(&pool.sleepers_done, 0);
    atomic_store(&pool.bar_count, 0);
    atomic_store(&pool.sleepers_bar, 0);
    pool.T = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void install_atfork(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

void fs_parallel(fs_task task, void *ctx, int threads)
{
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads <= 1 || in_pool_job) {
        task(ctx, 0, 1);
        return;
    }
    pthread_once(&atfork_once, install_atfork);
    if (pthread_mutex_trylock(&pool.lock) != 0) { /* busy with another caller's job */
        task(ctx, 0, 1);
        return;
    }
    const int64_t start = now_ns();
    const int had_workers = pool.workers;
    int T = running_solo(start) ? 1 : 1 + grow_pool(threads - 1);
    T = T < threads ? T : threads;
    if (T <= 1) {
        in_pool_job = 1; /* a job of its own inside this one runs alone too */
        task(ctx, 0, 1);
        in_pool_job = 0;
        pthread_mutex_unlock(&pool.lock);
        return;
    }
    /* The workers spin for the next job only while jobs come close together. */
    const int64_t gap = start - pool.last_job_end_ns;
    atomic_store_explicit(&pool.between_jobs_spin_ns, gap <= SPIN_NS ? SPIN_NS : 0,
                          memory_order_relaxed);
    pool.task = task;
    pool.ctx = ctx;
    pool.T = T;
    pool.caller_cpu = sched_getcpu();
    pool.caller_blocked_ns = 0;
    atomic_store(&pool.bar_count, 0);
    atomic_store(&pool.pending, pool.workers);
    publish(&pool.generation, atomic_load(&pool.generation) + 1, &pool.sleepers_job);

    in_pool_job = is_job_caller = 1;
    task(ctx, 0, T);
    in_pool_job = is_job_caller = 0;

    const int64_t done = now_ns();
    for (int left; (left = atomic_load_explicit(&pool.pending, memory_order_acquire)) != 0;)
        wait_while_equal(&pool.pending, left, &pool.sleepers_done, SPIN_NS);
    const int64_t joined = now_ns();
    const int64_t blocked = pool.caller_blocked_ns + (joined - done);
    if (pool.workers == had_workers) /* starting threads is no stall */
        note_join((done - start) - pool.caller_blocked_ns, blocked, joined);
    pool.last_job_end_ns = joined;
    pthread_mutex_unlock(&pool.lock);
}

void fs_barrier(int T)
{
    if (T <= 1)
        return;
    const int phase = atomic_load_explicit(&pool.bar_phase, memory_order_acquire);
    if (atomic_fetch_add(&pool.bar_count, 1) == T - 1) {
        atomic_store(&pool.bar_count, 0);
        publish(&pool.bar_phase, phase + 1, &pool.sleepers_bar);
    } else if (is_job_caller) {
        const int64_t t0 = now_ns();
        wait_while_equal(&pool.bar_phase, phase, &pool.sleepers_bar, SPIN_NS);
        pool.caller_blocked_ns += now_ns() - t0;
    } else {
        wait_while_equal(&pool.bar_phase, phase, &pool.sleepers_bar, SPIN_NS);
    }
}

int fs_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ------------------------------------------------------------ thread count */

static int thread_limit = 0; /* 0: not chosen yet */

/* The CPUs this process may use, or $FASTSGD_THREADS when it is a positive number below
 * that: more threads than cores only take turns on them (1000 made an epoch 16x slower). */
static int default_threads(void)
{
    const char *env = getenv("FASTSGD_THREADS");
    const long n = env ? strtol(env, NULL, 10) : 0;
    const int cpus = fs_cpu_count();
    return n > 0 && n < cpus ? (int)n : cpus;
}

int pool_threads(void)
{
    if (thread_limit <= 0)
        thread_limit = default_threads();
    return thread_limit;
}

int set_pool_threads(int threads)
{
    int previous = pool_threads();
    thread_limit = threads < 1 ? 1 : threads;
    return previous;
}
