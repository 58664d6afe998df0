/* peak.c -- the machine's fp32 multiply-add throughput, measured.
 *
 * Each thread runs `chains` independent chains of vector FMAs, acc = acc * m + c, on
 * the widest vectors the CPU runs (16 floats in AVX-512, 8 in AVX2, 4 in SSE2): with
 * more chains than FMA latency x pipes (at most 2 x 5 = 10 on the x86-64 cores of
 * today), the FMA units never wait, so the rate is their peak.  The chains and the two
 * constants must all stay in registers: AVX-512 has 32 vector registers, AVX2 and SSE2
 * 16, so 16 chains there left one chain spilled to the stack, and its store and reload
 * on every step held the whole loop back (116 of 187 GFLOP/s on a 2-core Zen 3).
 * The chains converge to c / (1 - m), far from overflow and denormals.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "kernels.h"

enum { STEPS = 1024 }; /* FMAs per chain between clock reads */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef float v8sf_p __attribute__((vector_size(32)));
typedef float v4sf_p __attribute__((vector_size(16)));

/* Runs CHAINS chains until `until` (seconds of now_s); returns the flops done. */
#define DEFINE_FMA_LOOP(NAME, TARGET, VEC, LANES, CHAINS)                                 \
    TARGET static double NAME(double until)                                               \
    {                                                                                     \
        VEC acc[CHAINS], m, c;                                                            \
        for (int l = 0; l < LANES; l++) {                                                 \
            m[l] = 0.999f;                                                                \
            c[l] = 1e-3f;                                                                 \
        }                                                                                 \
        for (int j = 0; j < CHAINS; j++)                                                  \
            for (int l = 0; l < LANES; l++)                                               \
                acc[j][l] = (float)j;                                                     \
        int64_t rounds = 0;                                                               \
        do {                                                                              \
            for (int s = 0; s < STEPS; s++) {                                             \
                _Pragma("GCC unroll 16") for (int j = 0; j < CHAINS; j++)                 \
                    acc[j] = acc[j] * m + c;                                              \
            }                                                                             \
            rounds++;                                                                     \
        } while (now_s() < until);                                                        \
        float sink = 0.0f; /* keeps the chains alive */                                   \
        for (int j = 0; j < CHAINS; j++)                                                  \
            sink += acc[j][0];                                                            \
        volatile float keep = sink;                                                       \
        (void)keep;                                                                       \
        return (double)rounds * STEPS * CHAINS * LANES * 2.0;                             \
    }

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
#define PEAK_X86_LEVELS 1
DEFINE_FMA_LOOP(fma_loop_avx512, __attribute__((target("arch=x86-64-v4"))), v16sf, 16, 16)
DEFINE_FMA_LOOP(fma_loop_avx2, __attribute__((target("arch=x86-64-v3"))), v8sf_p, 8, 12)
#endif
DEFINE_FMA_LOOP(fma_loop_baseline, , v4sf_p, 4, 12)

typedef double (*fma_loop_fn)(double until);

static fma_loop_fn pick_loop(const char **isa)
{
#ifdef PEAK_X86_LEVELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) {
        *isa = "avx512";
        return fma_loop_avx512;
    }
    if (__builtin_cpu_supports("x86-64-v3")) {
        *isa = "avx2";
        return fma_loop_avx2;
    }
#endif
    *isa = "baseline";
    return fma_loop_baseline;
}

const char *peak_isa(void)
{
    const char *isa;
    pick_loop(&isa);
    return isa;
}

enum { MAX_PEAK_THREADS = 256 };

typedef struct {
    fma_loop_fn loop;
    double until;
    double flops[MAX_PEAK_THREADS];
    int T;
} probe_job;

static void probe_part(void *job, int t, int T)
{
    probe_job *p = job;
    p->flops[t] = p->loop(p->until);
    if (t == 0)
        p->T = T;
}

/* One timed round on up to `threads` threads; GFLOP/s, *used the threads it got. */
static double probe_round(fma_loop_fn loop, double seconds, int threads, int *used)
{
    probe_job job;
    memset(&job, 0, sizeof job);
    job.loop = loop;
    const double start = now_s();
    job.until = start + seconds;
    fs_forget_stalls(); /* the probe asks for every thread, whatever came before */
    fs_parallel(probe_part, &job, threads < MAX_PEAK_THREADS ? threads : MAX_PEAK_THREADS);
    const double elapsed = now_s() - start; /* until the last thread is done */
    double flops = 0.0;
    for (int t = 0; t < job.T; t++)
        flops += job.flops[t];
    *used = job.T;
    return flops / elapsed * 1e-9;
}

double peak_gflops(double seconds, int threads, int *threads_used)
{
    const char *isa;
    const fma_loop_fn loop = pick_loop(&isa);
    int used = 1;
    if (threads < 1)
        threads = pool_threads();
    probe_round(loop, 0.02, threads, &used); /* wakes the threads and the wide units */
    enum { ROUNDS = 4 };
    double best = 0.0;
    for (int r = 0; r < ROUNDS; r++) {
        int got = 1;
        const double rate = probe_round(loop, seconds / ROUNDS, threads, &got);
        if (rate > best) {
            best = rate;
            used = got;
        }
    }
    if (threads_used)
        *threads_used = used;
    return best;
}
