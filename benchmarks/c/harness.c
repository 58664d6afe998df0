/* harness.c -- times one C kernel or one fused epoch, no Python, in a few seconds.
 *
 * Build (from the repository root, the flags of csrc/build.py):
 *     gcc -O3 -pthread -fopenmp-simd -ffp-contract=fast -fno-trapping-math -Icsrc \
 *         benchmarks/c/harness.c csrc/gemm.c csrc/pack.c csrc/products.c \
 *         csrc/pointwise.c csrc/train.c csrc/narrow.c csrc/pool.c csrc/peak.c -lm \
 *         -o build/harness
 * Run:
 *     build/harness matmul M K N      out (M, N) = a (M, K) @ b (K, N)
 *     build/harness weight B I O      dw (I, O) = x.T @ dy, x (B, I), dy (B, O)
 *     build/harness input B I O       dx (B, I) = dy @ w.T, dy (B, O), w (I, O)
 *     build/harness linear B I O      out (B, O) = x @ w + b
 *     build/harness epoch BS [N]      784-128-10 cross-entropy epoch, plain SGD, lr 0.01,
 *                                     N random rows (60000)
 *     build/harness peak              the FMA probe, GFLOP/s
 * Prints the median, min and max of the timed repetitions (ms) and the median's GFLOP/s.
 * FASTSGD_THREADS sets the threads, as for the library; HARNESS_CPU=1 times CPU seconds
 * instead of wall seconds (see now()); HARNESS_ISA=avx2 (or baseline) runs that
 * micro-kernel instead of the fastest one (set_matmul_isa); HARNESS_OFFSET=4 starts every
 * array 16 bytes past a 64-byte line, as NumPy's large arrays start; HARNESS_EVICT_MB=1024
 * reads 1 GiB of other memory before each repetition (evict_caches).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels.h"

/* Wall time, or with HARNESS_CPU=1 in the environment this process's CPU time (all its
 * threads), which another process on the same cores does not inflate. */
static double now(void)
{
    static int clock_id = -1;
    if (clock_id < 0)
        clock_id = getenv("HARNESS_CPU") ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC;
    struct timespec t;
    clock_gettime(clock_id, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* n floats on a 64-byte line, or with HARNESS_OFFSET=F in the environment F floats
 * past one (NumPy's large arrays start 16 bytes into a page: F = 4).  Arrays of 4 MiB
 * and more are backed by huge pages where the kernel allows, as NumPy asks for its own
 * (madvise): a training set read row by row through an index misses the TLB less. */
static float *random_floats(int64_t n, float scale)
{
    const int64_t offset = getenv("HARNESS_OFFSET") ? atoll(getenv("HARNESS_OFFSET")) : 0;
    const size_t huge = (size_t)2 << 20, bytes = (size_t)(n + offset) * sizeof(float);
    const int large = bytes >= 2 * huge;
    const size_t alignment = large ? huge : 64;
    float *p = aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
#ifdef MADV_HUGEPAGE
    if (large)
        madvise(p, (bytes + alignment - 1) / alignment * alignment, MADV_HUGEPAGE);
#endif
    p += offset;
    for (int64_t i = 0; i < n; i++)
        p[i] = scale * ((float)rand() / RAND_MAX - 0.5f);
    return p;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* With HARNESS_EVICT_MB=M in the environment, M MiB of other memory read and written
 * (untimed) before each repetition: the repetition's data then comes from memory, not
 * the last-level cache, as in the epoch bench after the other runners' turns, or on a
 * host whose cache is smaller than the data. */
static void evict_caches(void)
{
    static unsigned char *junk;
    static size_t bytes;
    if (!junk && getenv("HARNESS_EVICT_MB")) {
        bytes = (size_t)atoll(getenv("HARNESS_EVICT_MB")) << 20;
        junk = bytes ? calloc(bytes, 1) : NULL;
    }
    for (size_t i = 0; junk && i < bytes; i += 64)
        junk[i]++;
}

/* Repetitions of fn(ctx) for about `seconds` (timed), at least 5; reports median, min,
 * max. */
static void time_it(void (*fn)(void *), void *ctx, double flops, double seconds)
{
    enum { MAX_REPS = 100000 };
    static double t[MAX_REPS];
    fn(ctx); /* warm-up */
    int n = 0;
    double timed = 0.0;
    while (n < MAX_REPS && (n < 5 || timed < seconds)) {
        evict_caches();
        const double t0 = now();
        fn(ctx);
        t[n++] = now() - t0;
        timed += t[n - 1];
    }
    qsort(t, n, sizeof t[0], by_value);
    const double median = t[n / 2];
    printf("%d reps  median %.4f ms  min %.4f  max %.4f  %.1f GFLOP/s  (isa %s, %d threads, "
           "%lld pool stalls)\n",
           n, 1e3 * median, 1e3 * t[0], 1e3 * t[n - 1], flops / median * 1e-9, matmul_isa(),
           pool_threads(), (long long)pool_stalls());
}

typedef struct {
    const char *what;
    int64_t a, b, c;
    float *x, *y, *z, *bias;
} product;

static void run_product(void *ctx)
{
    const product *p = ctx;
    if (!strcmp(p->what, "matmul"))
        matmul(p->z, p->x, p->y, p->a, p->b, p->c, 0);
    else if (!strcmp(p->what, "weight"))
        matmul_backward_weight(p->z, p->x, p->y, p->a, p->b, p->c, 0);
    else if (!strcmp(p->what, "input"))
        matmul_backward_input(p->z, p->y, p->x, p->a, p->b, p->c, 0);
    else
        linear_forward(p->z, p->x, p->y, p->bias, p->a, p->b, p->c, 0);
}

typedef struct {
    int64_t N, bs, P, steps;
    float *params, *grads, *x, *lrs;
    int64_t *labels, *order;
    double *losses;
    fs_layer layers[3];
} epoch;

static void run_epoch(void *ctx)
{
    epoch *e = ctx;
    train_epoch(e->losses, e->params, e->grads, NULL, e->layers, 3, FS_CROSS_ENTROPY, e->x,
                NULL, 1, e->labels, e->order, e->lrs, e->N, e->bs, e->P, 0.0f, 0.0f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: harness matmul|weight|input|linear A B C | epoch BS [N] | peak\n");
        return 2;
    }
    const char *what = argv[1];
    if (getenv("HARNESS_ISA") && set_matmul_isa(getenv("HARNESS_ISA")) != 0) {
        fprintf(stderr, "HARNESS_ISA: this CPU cannot run %s\n", getenv("HARNESS_ISA"));
        return 2;
    }
    if (!strcmp(what, "peak")) {
        int used = 0;
        const double g = peak_gflops(1.0, 0, &used);
        printf("peak %.1f GFLOP/s on %d threads (%s)\n", g, used, peak_isa());
        return 0;
    }
    if (!strcmp(what, "epoch")) {
        epoch e = {.bs = argc > 2 ? atoll(argv[2]) : 256, .N = argc > 3 ? atoll(argv[3]) : 60000};
        const int64_t I = 784, H = 128, C = 10;
        e.layers[0] = (fs_layer){FS_LINEAR, I, H, 0};
        e.layers[1] = (fs_layer){FS_RELU, H, H, -1};
        e.layers[2] = (fs_layer){FS_LINEAR, H, C, I * H + H};
        e.P = I * H + H + H * C + C;
        e.steps = (e.N + e.bs - 1) / e.bs;
        e.params = random_floats(e.P, 0.1f);
        e.grads = random_floats(e.P, 0.0f);
        e.x = random_floats(e.N * I, 2.0f);
        e.lrs = random_floats(e.steps, 0.0f);
        for (int64_t s = 0; s < e.steps; s++)
            e.lrs[s] = 0.01f;
        e.losses = malloc(e.steps * sizeof(double));
        e.labels = malloc(e.N * sizeof(int64_t));
        e.order = malloc(e.N * sizeof(int64_t));
        for (int64_t i = 0; i < e.N; i++) {
            e.labels[i] = rand() % C;
            e.order[i] = i;
        }
        for (int64_t i = e.N - 1; i > 0; i--) {
            const int64_t j = rand() % (i + 1), t = e.order[i];
            e.order[i] = e.order[j], e.order[j] = t;
        }
        const double flops = 2.0 * e.N * (3.0 * I * H + 3.0 * H * C) - 2.0 * e.N * I * H;
        time_it(run_epoch, &e, flops, 3.0);
        return 0;
    }
    if (argc < 5) {
        fprintf(stderr, "usage: harness %s A B C\n", what);
        return 2;
    }
    product p = {what, atoll(argv[2]), atoll(argv[3]), atoll(argv[4])};
    const int64_t a = p.a, b = p.b, c = p.c;
    if (!strcmp(what, "matmul")) { /* M K N */
        p.x = random_floats(a * b, 1), p.y = random_floats(b * c, 1), p.z = random_floats(a * c, 0);
    } else if (!strcmp(what, "weight")) { /* B I O: x (B, I), dy (B, O), dw (I, O) */
        p.x = random_floats(a * b, 1), p.y = random_floats(a * c, 1), p.z = random_floats(b * c, 0);
    } else if (!strcmp(what, "input")) { /* B I O: w (I, O), dy (B, O), dx (B, I) */
        p.x = random_floats(b * c, 1), p.y = random_floats(a * c, 1), p.z = random_floats(a * b, 0);
    } else if (!strcmp(what, "linear")) { /* B I O */
        p.x = random_floats(a * b, 1), p.y = random_floats(b * c, 1), p.z = random_floats(a * c, 0);
        p.bias = random_floats(c, 1);
    } else {
        fprintf(stderr, "unknown kernel %s\n", what);
        return 2;
    }
    time_it(run_product, &p, 2.0 * a * b * c, 2.0);
    return 0;
}
