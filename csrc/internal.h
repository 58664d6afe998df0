/* internal.h -- helpers shared by the C sources; not part of the cffi interface. */
#ifndef FASTSGD_INTERNAL_H
#define FASTSGD_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* FS_CLONES marks a leaf compute function for GCC function multiversioning: the
 * compiler emits an AVX-512 (x86-64-v4), an AVX2 + FMA (x86-64-v3) and a baseline
 * copy, and the dynamic loader picks the best one for the CPU when the library loads.
 * The binary therefore runs on any x86-64 CPU; it is never built with -march=native.
 * Functions that start pool jobs (pool.c) stay single-version: they call the clones.
 * Other compilers and targets get one portable version. */
#ifndef FS_CLONES /* a build may define it, e.g. empty, to test one instruction set */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 \
    && defined(__x86_64__) && defined(__linux__)
#define FS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_CLONES
#endif
#endif

#if defined(__GNUC__)
#define FS_INLINE static inline __attribute__((always_inline))
#else
#define FS_INLINE static inline
#endif

/* Sixteen floats that GCC keeps in one AVX-512 register, two AVX2 registers or four
 * SSE registers, depending on the clone being compiled. */
typedef float v16sf __attribute__((vector_size(64)));

/* ------------------------------------------------- gemm.c and pack.c: operands */

/* An operand of a product: A[i][k] = p[i * rs + k * cs].  Either cs == 1 (row-major) or rs == 1 (transposed:
 * the view of x.T, said by `transposed`, which also decides a 1-wide x).
 * An A operand may also name the rows of its array through an index (a batch gathered
 * while packing): with rows, row r of the array is p + rows[r] * stride, so A[i][k] =
 * p[rows[i] * rs + k] (row-major) or p[i + rows[k] * cs] (transposed).  B has no rows
 * and is never marked transposed (B.cs tells its layout). */
typedef struct {
    const float *p;
    int64_t rs, cs;
    const int64_t *rows; /* NULL: the array's rows in order */
    int transposed;      /* A = x.T: a row of the array is a column of A */
} view;

/* The start of row r of the row-major array behind view A. */
FS_INLINE const float *view_line(view A, int64_t r)
{
    return A.p + (A.rows ? A.rows[r] : r) * (A.transposed ? A.cs : A.rs);
}


/* pack.c: packs depths [p0, p0 + kc) x columns [j0, j0 + n) of B (n <= nr) as one
 * panel, bp[k * nr + j], columns past n zero-filled.   bp (kc * nr) floats. */
void pack_b_panel(float *restrict bp, view B, int64_t p0, int64_t kc, int64_t j0, int64_t n,
                  int64_t nr);

/* pack.c: 64-byte aligned memory for `floats` floats for one use by a product (its
 * packed operands, or the scratch of a swapped product, which holds it while its inner
 * product packs), or NULL; give it back with gemm_release_buffer.  From
 * gemm_keep_buffers() to gemm_free_buffers() the products this thread runs reuse one
 * buffer per use instead of allocating their own (train.c). */
enum { GEMM_PACKING, GEMM_SWAPPED, N_GEMM_BUFFERS };
float *gemm_buffer(int use, size_t floats);
void gemm_release_buffer(int use, float *p);
void gemm_keep_buffers(void);
void gemm_free_buffers(void);

/* One SGD step of a parameter array, as sgd_update takes it (velocity NULL without
 * momentum). */
typedef struct {
    float *param, *velocity;
    float lr, momentum, weight_decay;
} sgd_step;

/* Work beside a product (gemm's side, or NULL), touching none of its arrays: run(ctx),
 * once, by the first of the product's threads to finish its share, while the others
 * still work on theirs. */
typedef struct {
    void (*run)(void *ctx);
    void *ctx;
} side_work;

/* A product whose threads split K (the fused epoch's first layer: see gemm.c): c holds
 * thread 0's depth blocks and partials[j - 1] (M, N) block j's product, for blocks
 * first <= j < blocks, which add_depth_partials adds to c in order (none: first ==
 * blocks).  partials: the caller's memory, (gemm_depth_blocks(K) - 1) * M * N floats. */
typedef struct {
    float *partials;
    int64_t first, blocks, M, N;
} depth_split;

/* gemm.c: c (M, N) = A (M, K) @ B (K, N) (+ bias (N,) along the rows, unless NULL),
 * blocked, packed and on the pool's threads.  With step (else NULL), then the SGD step
 * of step->param (M, N) with the gradient c, tile by tile as it is final; with side
 * (else NULL), that work too (see side_work); with split
 * (else NULL), the threads may split K, leaving partial products in split; with bad
 * (else NULL), *bad is set when an element of c is NaN or +-Inf.  gemm_depth_blocks(K):
 * the depth blocks of a product K deep.  add_depth_partials: rows [r0, r0 + n) of c +=
 * their partial products, in block order. */
void gemm(float *restrict c, view A, view B, const float *restrict bias, int64_t M,
          int64_t K, int64_t N, const sgd_step *step, const side_work *side,
          depth_split *split, atomic_int *bad);
int64_t gemm_depth_blocks(int64_t K);
void add_depth_partials(float *restrict c, const depth_split *split, int64_t r0, int64_t n);

/* products.c, for train.c: linear_forward of the batch x[rows[0..B)], read through the
 * index, with no gathered copy, the threads perhaps splitting I (split: then out is
 * whole once add_depth_partials has added its rows); and the weight gradient of x[rows]
 * (or of x itself, rows NULL) followed by the SGD step of the weights it belongs to
 * (step, or NULL for none), each block of rows of dw stepped as soon as it is final,
 * and `side` (or NULL) beside it (side_work).
 *   x (N, I) or (B, I), rows (B,) in [0, N), w (I, O), b (O,), dy (B, O)
 *   -> out (B, O), dw (I, O), step->param and step->velocity (I, O). */
void linear_forward_rows(float *restrict out, const float *restrict x,
                         const int64_t *restrict rows, const float *restrict w,
                         const float *restrict b, int64_t B, int64_t I, int64_t O,
                         depth_split *split);
void weight_gradient_step(float *restrict dw, const float *restrict x,
                          const int64_t *restrict rows, const float *restrict dy, int64_t B,
                          int64_t I, int64_t O, const sgd_step *step, const side_work *side);

/* narrow.c, for train.c's tail: the products of a LINEAR with O <= NARROW_MAX_O outputs
 * over the n rows of a piece, on the calling thread, from its weights w (I, O) laid out
 * by narrow_prepare into narrow_floats(I, O) floats, zeroed before the first layout (the
 * padding, which narrow_prepare leaves as it is).
 *   a (n, I), b (O,), dy (n, O) -> out (n, O) = a @ w + b, dx (n, I) = dy @ w.T (with
 *   gate (n, I), else NULL, 0 where gate <= 0: the dx of a ReLU before, gate its input),
 *   dw (I, O) = a.T @ dy. */
enum { NARROW_MAX_O = 16 };
int64_t narrow_floats(int64_t I, int64_t O);
void narrow_prepare(float *restrict prepared, const float *restrict w, int64_t I, int64_t O);
void narrow_forward(float *restrict out, const float *restrict a,
                    const float *restrict prepared, const float *restrict b, int64_t n,
                    int64_t I, int64_t O);
void narrow_backward_input(float *restrict dx, const float *restrict dy,
                           const float *restrict prepared, const float *restrict gate,
                           int64_t n, int64_t I, int64_t O);
void narrow_weight_gradient(float *restrict dw, const float *restrict a,
                            const float *restrict dy, int64_t n, int64_t I, int64_t O);

/* pool.c: fs_parallel(task, ctx, threads) runs task(ctx, t, T) for t < T <= threads,
 * t = 0 on the calling thread, and returns when all are done (T may come out below
 * `threads`, e.g. 1 while another thread's job runs).  Inside a task, fs_barrier(T)
 * waits for the T threads of the job.  fs_cpu_count(): the CPUs this process may use.
 * While the workers are held up (another process on their cores) jobs run on the
 * caller alone for a while; fs_forget_stalls() ends that at once. */
typedef void (*fs_task)(void *ctx, int t, int T);
void fs_parallel(fs_task task, void *ctx, int threads);
void fs_barrier(int T);
void fs_forget_stalls(void);
int fs_cpu_count(void);

#endif /* FASTSGD_INTERNAL_H */
