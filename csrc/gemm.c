/* gemm.c -- the blocked product under the matmul family (products.c): gemm().
 *
 * Dimension letters: M, K, N for the generic product C (M, N) = A (M, K) @ B (K, N).
 *
 * Every product goes through gemm(), which reads its operands through views:
 * A[i][k] = a[i * rs + k * cs].  The backward kernels pass x.T and w.T as the plain
 * row-major arrays x and w read the other way round; the transposes happen while
 * packing, so no transposed copy of a whole operand is ever made.
 *
 * The blocked algorithm (the Goto / BLIS scheme, sized for small training shapes):
 *
 *   for each chunk of depth (K) blocks:        pack B into column panels of NR,
 *                                              shared by all threads, one barrier;
 *     each thread, for its rows in blocks of MC, for each depth block of its kc:
 *       pack A (mc, kc) into row panels of MR,
 *       for each MR x NR tile of C:            the micro-kernel (gemm_kernel.h) keeps
 *                                              the tile in registers for kc rank-1
 *                                              updates from the two panels.
 *
 * A narrow row-major B (N <= 256 in whole panels: the forward pass and x.T @ dy of a
 * layer with up to 256 outputs) is read in place instead of packed; then the threads
 * take chunks of row panels (or column panels, when there are few rows) in turn from
 * a shared counter, so a thread kept off its core by another process holds up one
 * chunk, not half the product.  Beside it, a batch of x read through its rows' index
 * (the fused epoch's first layer: x[rows] and x[rows].T) is read in place too, not
 * packed.  With B packed, threads split the rows of C, or its
 * columns (each then packing only its own panels of B) when B is much wider than A is
 * tall, as in dx = dy @ w.T: apart from a shared packed B, the threads share nothing
 * but the fork and the join.  gemm() holds the pool job (pool.c).
 *
 * Instruction sets: the tile must match the register file (8 x 32 floats in 16 AVX-512
 * registers, 6 x 16 in 12 AVX2 registers, 6 x 8 in 12 SSE2 registers), so the block
 * function and the A packing (whose panels have the tile's height) are compiled once per
 * instruction set from gemm_kernel.h, each set with its own tile, and one set is picked
 * at run time with __builtin_cpu_supports.  B's panels, whose width is an argument, and
 * the packing memory are pack.c's; the thread count and the pool, pool.c's.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"

enum {
    MC = 128, /* rows of A packed at once by one thread (at most MC x KC floats) */
    /* The largest depth block, of any instruction set (kernel_set's kc). */
    KC = 400,
    /* Row stride of a packed row-major A panel.  256 (1 KiB) put a panel's 8 rows in 4
     * of the L1 cache's 64 sets: the micro-kernel ran at ~90 GFLOP/s on one Ice Lake
     * core instead of ~145 with a stride of 256 + 16 (tile timed alone, in cache). */
    A_LD = KC + 16,
    MAX_CHUNKS = 1024, /* pieces of C taken by the threads of one product, at most */
};

/* Products below this many flops run on one thread: waking the team costs more. */
#define PARALLEL_MIN_FLOPS (1 << 20)
/* Row-major B with at most this many columns is read in place, or a copy of it on
 * 64-byte lines (narrow_b_reading). */
#define DIRECT_B_MAX_N 256
#define UNALIGNED_B_MAX_M 64
/* x.T (K, M) of at most this many rows is read in place beside a B read in place, through
 * IDENTITY_ROWS (gemm). */
#define IN_PLACE_MAX_K 64
static const int64_t IDENTITY_ROWS[IN_PLACE_MAX_K] = {
    0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
    44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};
/* At most this many floats of packed B (16 MiB) are live at once. */
#define PACKED_B_MAX_FLOATS ((int64_t)1 << 22)

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ------------------------------------------------------------ micro-kernels */

typedef float v8sf __attribute__((vector_size(32)));
typedef float v4sf __attribute__((vector_size(16)));

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
#define GEMM_X86_LEVELS 1
#define GK_NAME compute_block_avx512
#define GK_PACK_A pack_a_avx512
#define GK_TARGET __attribute__((target("arch=x86-64-v4")))
#define GK_VEC v16sf
#define GK_LANES 16
#define GK_MR 8
#define GK_NV 2
#include "gemm_kernel.h"

#define GK_NAME compute_block_avx2
#define GK_PACK_A pack_a_avx2
#define GK_TARGET __attribute__((target("arch=x86-64-v3")))
#define GK_VEC v8sf
#define GK_LANES 8
#define GK_MR 6
#define GK_NV 2
#include "gemm_kernel.h"
#endif

#define GK_NAME compute_block_baseline /* SSE2 on x86-64, the default elsewhere */
#define GK_PACK_A pack_a_baseline
#define GK_TARGET
#define GK_VEC v4sf
#define GK_LANES 4
#define GK_MR 6
#define GK_NV 2
#include "gemm_kernel.h"

typedef void (*pack_a_fn)(float *restrict ap, view A, int64_t i0, int64_t mc, int64_t p0,
                          int64_t kc);
typedef void (*block_fn)(float *restrict c, int64_t ldc, int64_t mc, int64_t nc,
                         int64_t kc, const float *restrict ap, int a_rowmajor,
                         const int64_t *restrict a_lines, int64_t a_ld, int fetch_lines,
                         const float *restrict b, int64_t ldb, int64_t panel_depth,
                         int accumulate, const float *restrict bias, int *restrict bad);

/* A micro-kernel, its tile (mr rows by nr columns of C), its largest depth block kc
 * (<= KC) and its A packing.  The depth blocks decide the bits of a product, so every
 * product on one instruction set takes the same kc: a product computed transposed
 * (gemm_swapped) then gives the bits of the plain one. */
typedef struct {
    const char *name;
    int mr, nr, kc;
    pack_a_fn pack_a;
    block_fn compute_block;
} kernel_set;

/* kc: with AVX-512 (L1 of 48 KiB and more), 784 in-features are two blocks, not four,
 * so each tile's sum is stored and loaded again half as often (1 thread, 64x784x128:
 * 222 -> 227 GFLOP/s; harness epoch, 784-128-10: bs 64 81.7 -> 80.3 ms, bs 256 77.9 ->
 * 77.0; packed B too: 256x784x784 0.89 -> 0.86 ms).  With AVX2, 256 keeps a packed B
 * panel and an A panel (22 KiB) within a 32 KiB L1 cache. */
static const kernel_set KERNEL_SETS[] = { /* fastest first */
#ifdef GEMM_X86_LEVELS
    {"avx512", 8, 32, 400, pack_a_avx512, compute_block_avx512},
    {"avx2", 6, 16, 256, pack_a_avx2, compute_block_avx2},
#endif
    {"baseline", 6, 8, 256, pack_a_baseline, compute_block_baseline},
};
enum { N_KERNEL_SETS = sizeof KERNEL_SETS / sizeof KERNEL_SETS[0] };

static int cpu_runs(const kernel_set *set)
{
#ifdef GEMM_X86_LEVELS
    __builtin_cpu_init();
    if (strcmp(set->name, "avx512") == 0)
        return __builtin_cpu_supports("x86-64-v4") != 0;
    if (strcmp(set->name, "avx2") == 0)
        return __builtin_cpu_supports("x86-64-v3") != 0;
#endif
    (void)set;
    return 1;
}

static const kernel_set *active_set = NULL; /* NULL: not chosen yet */

static const kernel_set *kernels_in_use(void)
{
    if (!active_set) {
        for (int i = 0; i < N_KERNEL_SETS && !active_set; i++)
            if (cpu_runs(&KERNEL_SETS[i]))
                active_set = &KERNEL_SETS[i];
    }
    return active_set;
}

const char *matmul_isa(void) { return kernels_in_use()->name; }

int set_matmul_isa(const char *name)
{
    for (int i = 0; i < N_KERNEL_SETS; i++) {
        if (strcmp(KERNEL_SETS[i].name, name) == 0 && cpu_runs(&KERNEL_SETS[i])) {
            active_set = &KERNEL_SETS[i];
            return 0;
        }
    }
    return -1;
}

/* -------------------------------------------------------------------- gemm */

/* c (M, N) = A (M, K) @ B (K, N), plus bias (N,) along the rows unless NULL.
 * Without memory for the packing buffers, gemm() falls back to this plain loop. */
static void gemm_unblocked(float *restrict c, view A, view B, const float *restrict bias,
                           int64_t M, int64_t K, int64_t N)
{
    for (int64_t i = 0; i < M; i++) {
        float *row = c + i * N;
        for (int64_t j = 0; j < N; j++)
            row[j] = bias ? bias[j] : 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float a_ik = A.transposed ? view_line(A, k)[i] : view_line(A, i)[k];
            for (int64_t j = 0; j < N; j++)
                row[j] += a_ik * B.p[k * B.rs + j * B.cs];
        }
    }
}

/* With step, rows [i0, i1) x columns [j0, j1) of c (M, N), once they hold their final
 * values, are the gradient of step->param (M, N): the SGD step of those elements is
 * taken at once, while they are in this core's cache, element by element as
 * sgd_update takes it. */
static void step_region(const sgd_step *step, const float *c, int64_t N, int64_t i0,
                        int64_t i1, int64_t j0, int64_t j1)
{
    if (step && j0 == 0 && j1 == N && i0 < i1) { /* whole rows: one stretch of memory */
        sgd_update(step->param + i0 * N, step->velocity ? step->velocity + i0 * N : NULL,
                   c + i0 * N, (i1 - i0) * N, step->lr, step->momentum, step->weight_decay);
        return;
    }
    for (int64_t i = i0; step && j0 < j1 && i < i1; i++)
        sgd_update(step->param + i * N + j0, step->velocity ? step->velocity + i * N + j0 : NULL,
                   c + i * N + j0, j1 - j0, step->lr, step->momentum, step->weight_decay);
}

/* With bad (else NULL), sets *bad when one of the n floats from c on is NaN or +-Inf:
 * the outputs a product computed in a piece of its own (swapped, unblocked, or the
 * split depths' sums) for the contract's value check (c_ext); the blocked products
 * check each tile as they store it (compute_block). */
static void scan_floats(atomic_int *bad, const float *c, int64_t n)
{
    if (bad && n > 0 && !all_finite_f32(c, n))
        atomic_store_explicit(bad, 1, memory_order_relaxed);
}

/* One product as gemm() lays it out; shared by the threads. */
typedef struct {
    const kernel_set *ks;
    float *c;
    view A, B;
    const float *bias;
    const sgd_step *step; /* or NULL: see step_region */
    const side_work *side; /* or NULL: run by the first thread done with its share */
    atomic_int side_taken;
    int64_t M, K, N;
    int64_t kc_step;     /* depth of the blocks, all equal but the last, <= ks->kc */
    int64_t chunk_depth; /* depths of B packed at once: whole blocks */
    int64_t m_panels, n_panels;
    int64_t mc_step;     /* rows of A packed at once: MC rounded down to whole panels */
    int direct_b;        /* read B in place, unpacked (row-major, narrow, whole panels) */
    int64_t b_copy_ld;   /* with direct_b, when B is off its lines: each thread reads its
                            own copy of B, rows b_copy_ld floats apart (narrow_b_reading) */
    int split_cols;      /* threads take column ranges of C (and pack their own B) */
    float *bp;           /* packed B of one chunk: per depth block, n_panels panels, each
                            laid out kc_step deep, so a panel's place never changes */
    float *ap;           /* packed A blocks, a_floats per thread */
    int64_t a_floats;
    /* With B read in place the threads take pieces of C: n_chunks chunks of its P row
     * panels (or column panels with split_cols), chunk c the panels [c * P / n_chunks,
     * (c + 1) * P / n_chunks), each chunk claimed once through its flag in taken (see
     * gemm_part). */
    int64_t n_chunks;
    atomic_uchar *taken;
    /* With split (see gemm) the threads take the depth blocks, n_blocks of them: thread
     * t of T blocks [t * n_blocks / T, (t + 1) * n_blocks / T), thread 0 into c, the
     * others each block into its own partial product, split->partials + (j - 1) * M * N
     * for block j, left for the caller to add (add_depth_partials). */
    depth_split *split;
    int64_t n_blocks;
    atomic_int *bad; /* or NULL: set when a final element of c is NaN or +-Inf */
} gemm_plan;

/* Rows [i0, i1) x columns [j0, j1) of C over the depths [p_begin, p_end) of one chunk
 * (the whole of K when B is read in place), in blocks of MC rows: for each depth block,
 * A's rows packed (or, for x[rows].T, its whole panels read in place) and the
 * micro-kernel over the tiles, B's block read in place or from the chunk's packed
 * panels (compute_block reads x[rows] and x[rows].T in place only beside B read in
 * place; x[rows] then whole, unpacked).  Once a block of rows has its last depth, its
 * SGD step (step_region). */
static void macro_kernel(const gemm_plan *g, float *ap, view B, float *dst, int64_t i0,
                         int64_t i1, int64_t j0, int64_t j1, int64_t p_begin, int64_t p_end,
                         int *bad)
{
    const int64_t N = g->N, kc_step = g->kc_step, mr = g->ks->mr;
    const int64_t block_floats = kc_step * g->ks->nr * g->n_panels;
    for (int64_t ic = i0; ic < i1 && j0 < j1; ic += g->mc_step) {
        const int64_t mc = min64(g->mc_step, i1 - ic);
        for (int64_t p0 = p_begin; p0 < p_end; p0 += kc_step) {
            const int64_t kc = min64(kc_step, p_end - p0);
            const float *b = g->direct_b
                                 ? B.p + p0 * B.rs + j0
                                 : g->bp + (p0 - p_begin) / kc_step * block_floats + j0 * kc_step;
            const int64_t ldb = g->direct_b ? B.rs : 0, depth = g->direct_b ? 0 : kc_step;
            /* c accumulates over all of K; a partial product over its one block */
            float *c = dst + ic * N + j0;
            const int accumulate = dst == g->c ? p0 > 0 : p0 > p_begin;
            const float *bias = p0 == 0 && g->bias ? g->bias + j0 : NULL;
            /* the outputs' last depth block: their final values, scanned as stored */
            int *scan = g->bad && dst == g->c && p0 + kc == g->K ? bad : NULL;
            if (g->direct_b && g->A.rows && !g->A.transposed) {
                /* x[rows] beside B read in place: its rows read in place, unpacked.  (The
                 * rows come from memory at each step of the fused epoch, and the tiles'
                 * loads wait for them better than a copy does: harness epoch 784-128-10,
                 * bs 64 76.1 -> 73.0 ms, bs 256 72.1 -> 68.6.) */
                g->ks->compute_block(c, N, mc, j1 - j0, kc, g->A.p + p0, 1, g->A.rows + ic,
                                     g->A.rs, g->A.rows != IDENTITY_ROWS, b, ldb, depth,
                                     accumulate, bias, scan);
                continue;
            }
            /* x[rows].T beside B read in place: A's whole panels read in place too */
            const int64_t in_place =
                g->direct_b && g->A.rows && g->A.transposed ? mc - mc % mr : 0;
            if (in_place > 0)
                g->ks->compute_block(c, N, in_place, j1 - j0, kc, g->A.p + ic, 0,
                                     g->A.rows + p0, g->A.cs, g->A.rows != IDENTITY_ROWS, b,
                                     ldb, depth, accumulate, bias, scan);
            if (in_place == mc)
                continue;
            g->ks->pack_a(ap, g->A, ic + in_place, mc - in_place, p0, kc);
            g->ks->compute_block(c + in_place * N, N, mc - in_place, j1 - j0, kc, ap,
                                 !g->A.transposed, NULL, 0, 0, b, ldb, depth, accumulate,
                                 bias, scan);
        }
        if (p_end == g->K && dst == g->c) {
            step_region(g->step, g->c, N, ic, ic + mc, j0, j1);
        }
    }
}

/* A thread's share is done: tell gemm()'s caller if its tiles found a final value NaN
 * or +-Inf, and take the side work if no other thread has. */
static void share_done(gemm_plan *g, int bad)
{
    if (bad && g->bad)
        atomic_store_explicit(g->bad, 1, memory_order_relaxed);
    if (g->side && !atomic_exchange_explicit(&g->side_taken, 1, memory_order_relaxed))
        g->side->run(g->side->ctx);
}

/* Thread t of T's share of the product (a pool task, or alone with T == 1, where the
 * barriers do nothing). */
static void gemm_part(void *plan, int t, int T)
{
    gemm_plan *g = plan;
    const int64_t M = g->M, K = g->K, N = g->N, kc_step = g->kc_step;
    const int64_t mr = g->ks->mr, nr = g->ks->nr;
    const int64_t n_panels = g->n_panels, block_floats = kc_step * nr * n_panels;
    float *const ap = g->ap + (int64_t)t * g->a_floats;
    view B = g->B;
    int bad = 0; /* this thread's tiles: a final value NaN or +-Inf (with g->bad) */

    if (g->split) {
        const int64_t P = g->n_blocks, MN = M * N;
        for (int64_t j = t * P / T; j < (t + 1) * P / T; j++) {
            const int64_t p0 = j * kc_step, p1 = min64(K, p0 + kc_step);
            macro_kernel(g, ap, B, t == 0 ? g->c : g->split->partials + (j - 1) * MN, 0, M,
                         0, N, p0, p1, &bad);
        }
        if (t == 0) { /* what is left to add: the blocks past thread 0's, in c already */
            g->split->first = P / T;
            g->split->blocks = P;
            g->split->M = M;
            g->split->N = N;
        }
        share_done(g, 0);
        return;
    }

    if (g->direct_b) {
        /* No shared packing, so no barrier.  Thread t starts at chunk t * n / T and walks
         * on through the chunks, wrapping, taking each one nobody has claimed.  On a
         * quiet machine every thread takes the same range at every call, so the lines
         * of C it writes (a weight gradient) stay in its core's cache for the update
         * that reads them; one kept off its core by another process holds up only the
         * chunk it has, and the others take the rest of its range from the back.  Each
         * tile of C is computed the same way whoever takes it, so the result does not
         * depend on the split.  The chunks are spread evenly, so that thread t's range
         * starts at panel t * panels / T: with T = 2, the rows of a weight gradient 784
         * deep split at row 392, where the fused epoch's forward splits the same weights
         * by depth.  (Thread 1 started at row 416, and the caller took 13% longer than
         * the worker on its rows, 24 of them read from the other core's cache: harness
         * epoch, 784-128-10, bs 64 79.3 -> 76.9 ms, bs 256 76.3 -> 74.0.) */
        if (g->b_copy_ld) { /* this thread's copy of B, on line starts */
            float *copy = g->bp + t * K * g->b_copy_ld;
            for (int64_t k = 0; k < K; k++)
                memcpy(copy + k * g->b_copy_ld, B.p + k * B.rs, (size_t)N * sizeof(float));
            B = (view){copy, g->b_copy_ld, 1, NULL, 0};
        }
        const int64_t n = g->n_chunks, start = t * n / T;
        const int64_t panels = g->split_cols ? n_panels : g->m_panels;
        for (int64_t s = 0; s < n; s++) {
            const int64_t chunk = (start + s) % n;
            if (atomic_exchange_explicit(&g->taken[chunk], 1, memory_order_relaxed))
                continue;
            const int64_t first = chunk * panels / n, last = (chunk + 1) * panels / n;
            if (g->split_cols)
                macro_kernel(g, ap, B, g->c, 0, M, nr * first, min64(N, nr * last), 0, K, &bad);
            else
                macro_kernel(g, ap, B, g->c, mr * first, min64(M, mr * last), 0, N, 0, K, &bad);
        }
        share_done(g, bad);
        return;
    }

    int64_t i0 = 0, i1 = M, j0 = 0, j1 = N; /* with B packed, a fixed share of C */
    if (g->split_cols) {
        j0 = nr * (t * n_panels / T);
        j1 = min64(N, nr * ((t + 1) * n_panels / T));
    } else {
        i0 = mr * (t * g->m_panels / T);
        i1 = min64(M, mr * ((t + 1) * g->m_panels / T));
    }
    for (int64_t chunk = 0; chunk < K; chunk += g->chunk_depth) {
        const int64_t chunk_end = min64(K, chunk + g->chunk_depth);
        const int64_t n_blocks = ceil_div(chunk_end - chunk, kc_step);

        if (g->split_cols) {
            /* Each thread packs the panels of its own columns: nothing to wait for. */
            for (int64_t blk = 0; blk < n_blocks; blk++) {
                const int64_t p0 = chunk + blk * kc_step, kc = min64(kc_step, K - p0);
                for (int64_t jp = j0 / nr; jp * nr < j1; jp++)
                    pack_b_panel(g->bp + blk * block_floats + jp * nr * kc_step, B, p0, kc,
                                 jp * nr, min64(nr, N - jp * nr), nr);
            }
        } else {
            /* The threads pack this chunk of B together, each panel once. */
            const int64_t jobs = n_blocks * n_panels;
            for (int64_t job = t * jobs / T; job < (t + 1) * jobs / T; job++) {
                const int64_t blk = job / n_panels, jp = job % n_panels;
                const int64_t p0 = chunk + blk * kc_step, kc = min64(kc_step, K - p0);
                pack_b_panel(g->bp + blk * block_floats + jp * nr * kc_step, B, p0, kc,
                             jp * nr, min64(nr, N - jp * nr), nr);
            }
            fs_barrier(T); /* B is packed */
        }
        macro_kernel(g, ap, B, g->c, i0, i1, j0, j1, chunk, chunk_end, &bad);
        if (!g->split_cols && chunk_end < K)
            fs_barrier(T); /* before the next chunk overwrites the packed B */
    }
    share_done(g, bad);
}

/* How a narrow row-major B (rows of at most DIRECT_B_MAX_N floats, whole panels) is
 * read, by where its rows start in a 64-byte line.  On line starts (a row stride of
 * whole lines and an aligned array), in place.  Otherwise every AVX-512 load of a row
 * straddles two lines (NumPy's arrays of 128 KiB and more start 16 bytes into a page):
 * for a few rows of A (at most UNALIGNED_B_MAX_M) still in place, since any copy of B
 * costs more than the straddling loads; for more, B is first copied row by row onto
 * line starts and that copy read in place, which is cheaper than packing it into
 * panels (B 16 bytes off, min us, 1 | 2 threads: 256x784x128 packed 298 | 183, copied
 * 245 | 130, on line starts 235 | 118; 64x784x128 packed 72, in place 66, on line
 * starts 58). */
enum { B_IN_PLACE, B_COPIED, B_PACKED };

static int narrow_b_reading(view B, int64_t M, int64_t N, int64_t nr)
{
    if (B.cs != 1 || N % nr != 0 || N > DIRECT_B_MAX_N)
        return B_PACKED;
    const int on_lines = (uintptr_t)B.p % 64 == 0 && (B.rs * (int64_t)sizeof(float)) % 64 == 0;
    return on_lines || M <= UNALIGNED_B_MAX_M ? B_IN_PLACE : B_COPIED;
}


/* Whether c = A @ B is better computed as c.T = B.T @ A.T (gemm_swapped): B is
 * row-major and narrow (a layer with few outputs: its forward x @ w and its weight
 * gradient x.T @ dy), A reads its array without an index, and c is taller than wide.
 * The tiles of c would be mostly padding (10 of 32 columns); those of c.T are whole.
 * With a bias, only when K fits one depth block (see gemm_swapped). */
static int swap_pays(view A, view B, const float *bias, int64_t M, int64_t K, int64_t N)
{
    return !A.rows && B.cs == 1 && N <= kernels_in_use()->nr / 2 && M >= 2 * N
           && (!bias || K <= kernels_in_use()->kc);
}

/* c (M, N) = A @ B (+ bias) as c.T = B.T @ A.T, into a scratch array transposed into
 * c.  The same products are summed in the same order, so the values are the same; the
 * bias is added last, as the plain product adds it after its one depth block.  Returns
 * 0, or -1 (nothing done) without memory for the scratch. */
static int gemm_swapped(float *restrict c, view A, view B, const float *restrict bias,
                        int64_t M, int64_t K, int64_t N)
{
    float *ct = gemm_buffer(GEMM_SWAPPED, (size_t)(M * N));
    if (!ct)
        return -1;
    /* B.T[j][k] = B.p[k * B.rs + j]: a transposed view of B's array.  A.T[k][i] =
     * A.p[k * A.cs + i * A.rs]: x itself for A = x.T, read in place; x.T for A = x,
     * packed by pack_b_panel like w.T. */
    gemm(ct, (view){B.p, 1, B.rs, .transposed = 1}, (view){A.p, A.cs, A.rs}, NULL, N, K, M,
         NULL, NULL, NULL, NULL);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            c[i * N + j] = bias ? ct[j * M + i] + bias[j] : ct[j * M + i];
    gemm_release_buffer(GEMM_SWAPPED, ct);
    return 0;
}

int64_t gemm_depth_blocks(int64_t K) { return K > 0 ? ceil_div(K, kernels_in_use()->kc) : 0; }

void add_depth_partials(float *restrict c, const depth_split *split, int64_t r0, int64_t n)
{
    const int64_t N = split->N, MN = split->M * N;
    for (int64_t i = r0; i < r0 + n; i++)
        for (int64_t j = split->first; j < split->blocks; j++) {
            const float *part = split->partials + (j - 1) * MN + i * N;
            float *row = c + i * N;
            for (int64_t col = 0; col < N; col++)
                row[col] += part[col];
        }
}

/* c (M, N) = A (M, K) @ B (K, N), plus bias (N,) along the rows unless NULL; with step
 * (else NULL), then the SGD step of step->param (M, N) with the gradient c; with bad
 * (else NULL), *bad set when an element of c is NaN or +-Inf (see internal.h).
 *
 * With split (and no step or bad, B read in place, two threads or more, more than one
 * depth block) the threads split K instead of C: each computes its depth blocks for
 * all of C, thread 0 into c and the others each block into a partial product, left in
 * split->partials for the caller to add to c in block order (add_depth_partials), rows
 * at a time; the sums are the ones the blocks make in turn, so the bits are the same
 * on any number of threads.  The fused epoch's first layer asks for it: each thread
 * then reads only the rows of w that its weight-gradient tiles stepped in the previous
 * step (the rows of dw split the same way), instead of all of w, half of it just
 * written on the other core (2 threads, 784-128-10, harness epoch at bs 64: 141 -> 106
 * ms; bs 256: 114 -> 103.5 ms).  The epoch's tail adds the partials of its rows, with
 * no barrier between the threads (harness epoch: bs 64 80.4 -> 79.8 ms, bs 256 76.8 ->
 * 76.5). */
void gemm(float *restrict c, view A, view B, const float *restrict bias, int64_t M,
          int64_t K, int64_t N, const sgd_step *step, const side_work *side,
          depth_split *split, atomic_int *bad)
{
    if (split)
        split->first = split->blocks = 0; /* nothing to add, unless split below */
    const int swapped = M > 0 && N > 0 && K > 0 && swap_pays(A, B, bias, M, K, N);
    const int blocked = M > 0 && N > 0 && K > 0 && !swapped;
    if (side && !blocked) { /* else run by the blocked product's threads (share_done) */
        side->run(side->ctx);
        side = NULL;
    }
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        gemm_unblocked(c, A, B, bias, M, 0, N);
        step_region(step, c, N, 0, M, 0, N);
        scan_floats(bad, c, M * N);
        return;
    }
    if (swapped && gemm_swapped(c, A, B, bias, M, K, N) == 0) {
        step_region(step, c, N, 0, M, 0, N);
        scan_floats(bad, c, M * N);
        return;
    }
    gemm_plan g = {.ks = kernels_in_use(), .c = c, .A = A, .B = B, .bias = bias,
                   .step = step, .side = side, .M = M, .K = K, .N = N, .bad = bad};
    atomic_init(&g.side_taken, 0);
    const int64_t mr = g.ks->mr, nr = g.ks->nr;
    /* Narrow row-major B (rows of at most 1 KiB, whole panels, on 64-byte lines) is read
     * in place: at the training shapes packing it cost more than it saved, and with no
     * shared packed B the threads need no barrier.  Wide B rows are packed (power-of-two
     * strides of several KiB made the in-place reads thrash the L1 cache). */
    const int b_reading = narrow_b_reading(B, M, N, nr);
    g.direct_b = b_reading != B_PACKED;
    g.kc_step = ceil_div(K, ceil_div(K, g.ks->kc));
    g.m_panels = ceil_div(M, mr);
    g.n_panels = ceil_div(N, nr);
    g.mc_step = MC / mr * mr;
    const int64_t block_floats = g.kc_step * nr * g.n_panels;
    const int64_t blocks_per_chunk = PACKED_B_MAX_FLOATS / block_floats;
    g.chunk_depth = min64(K, (blocks_per_chunk > 1 ? blocks_per_chunk : 1) * g.kc_step);
    /* x.T of a few rows beside B read in place: read in place too, through the identity
     * index, rather than packed (x.T @ dy 64x784x128, harness, 1 | 2 threads, medians of
     * two runs: 64.9 | 35.7 us packed, 58.1 | 32.4 in place; at 256 rows
     * packing is faster, 263 | 143 against 307 | 168). */
    if (g.direct_b && A.transposed && !A.rows && K <= IN_PLACE_MAX_K)
        g.A.rows = IDENTITY_ROWS;
    g.a_floats = min64(g.mc_step, g.m_panels * mr) * A_LD;

    int threads = pool_threads();
    atomic_uchar taken[MAX_CHUNKS];
    if ((double)M * N * K * 2.0 < PARALLEL_MIN_FLOPS)
        threads = 1;

    /* B's copies on line starts: one per thread, each made and read by its own thread
     * (one shared copy left one core reading the other's fresh lines: 2 threads,
     * 256x784x128, 168 us against 130). */
    g.b_copy_ld = b_reading == B_COPIED ? ceil_div(N, 16) * 16 : 0;
    const int64_t b_floats = b_reading == B_COPIED ? threads * K * g.b_copy_ld
                             : g.direct_b ? 0
                                          : ceil_div(g.chunk_depth, g.kc_step) * block_floats;

    /* With B read in place the threads share nothing and take chunks of row panels in
     * turn, or of column panels when there are too few row panels.  A packed B is
     * shared and the threads split the rows of C, or its columns when there are too few
     * row panels or B is much wider than A is tall (dx = dy @ w.T at small batches):
     * then each packs only its own panels of B, and nobody waits. */
    if (g.direct_b) {
        g.split_cols = g.m_panels < threads;
        /* About four chunks a thread, each at most one block of MC rows. */
        const int64_t panels = g.split_cols ? g.n_panels : g.m_panels;
        const int64_t most = g.split_cols ? panels : g.mc_step / mr;
        int64_t chunk_panels = min64(most, ceil_div(panels, 4 * (int64_t)threads));
        if (ceil_div(panels, chunk_panels) > MAX_CHUNKS)
            chunk_panels = ceil_div(panels, MAX_CHUNKS);
        g.n_chunks = ceil_div(panels, chunk_panels);
        for (int64_t i = 0; i < g.n_chunks; i++)
            atomic_init(&taken[i], 0);
        g.taken = taken;
    } else
        g.split_cols = g.n_panels >= threads && (g.m_panels < threads || 2 * M <= N);

    g.n_blocks = ceil_div(K, g.kc_step);
    g.split = split && !step && !bad && threads > 1 && g.n_blocks > 1
                      && b_reading == B_IN_PLACE ? split : NULL;

    float *buffer = gemm_buffer(GEMM_PACKING, (size_t)(b_floats + threads * g.a_floats));
    if (!buffer) {
        if (side)
            side->run(side->ctx);
        gemm_unblocked(c, A, B, bias, M, K, N);
        step_region(step, c, N, 0, M, 0, N);
        scan_floats(bad, c, M * N);
        return;
    }
    g.bp = buffer;
    g.ap = buffer + b_floats;

    fs_parallel(gemm_part, &g, threads);
    gemm_release_buffer(GEMM_PACKING, buffer);
}
