/* kernels.h -- every kernel of the fastsgd C backend, one prototype each.
 *
 * Dimension letters (as in fastsgd/backends/contract.py):
 *     B  batch size           I  in-features of a linear layer
 *     O  out-features         C  classes
 *     M, K, N                 a generic matmul (M, K) @ (K, N) -> (M, N)
 *     n                       the element count of an elementwise kernel
 *     N, L, P                 (train_epoch) samples, layers, floats of the parameter block
 *
 * Conventions: outputs come first, inputs are const; every array is float32 (labels
 * int64), C-contiguous and row-major; a linear layer's weight w is stored (I, O), so
 * y = x @ w + b.  Backward kernels take the un-transposed tensors and transpose inside.
 * Arrays behind `restrict` pointers must not overlap; the elementwise kernels may run in
 * place (out == x) and so carry no `restrict`.  The caller (fastsgd/backends/c_ext.py)
 * checks dtypes, layouts and sizes before each call.
 *
 * This file is also the cffi cdef: csrc/build.py drops the preprocessor lines and
 * feeds the rest to cffi, so keep it to plain prototypes.
 */
#ifndef FASTSGD_KERNELS_H
#define FASTSGD_KERNELS_H

#include <stdint.h>

/* ------------------------------------------------------------ matmul (products.c) */

/* Each returns 1, or, when scan is set, 0 if an element of its output is NaN or +-Inf
 * (scanned where each part of the output was computed; the contract's value check). */

/* out = a @ b.   a (M, K), b (K, N) -> out (M, N). */
int matmul(float *restrict out, const float *restrict a, const float *restrict b, int64_t M,
           int64_t K, int64_t N, int scan);

/* dx = dy @ w.T, no transposed copy.   dy (B, O), w (I, O) -> dx (B, I). */
int matmul_backward_input(float *restrict dx, const float *restrict dy,
                          const float *restrict w, int64_t B, int64_t I, int64_t O, int scan);

/* dw = x.T @ dy, no transposed copy.   x (B, I), dy (B, O) -> dw (I, O). */
int matmul_backward_weight(float *restrict dw, const float *restrict x,
                           const float *restrict dy, int64_t B, int64_t I, int64_t O, int scan);

/* db[o] = sum_b dy[b, o].   dy (B, O) -> db (O,). */
int bias_backward(float *restrict db, const float *restrict dy, int64_t B, int64_t O, int scan);

/* out = x @ w + b.   x (B, I), w (I, O), b (O,) -> out (B, O). */
int linear_forward(float *restrict out, const float *restrict x, const float *restrict w,
                   const float *restrict b, int64_t B, int64_t I, int64_t O, int scan);

/* Gradients of y = x @ w + b:  dx = dy @ w.T (B, I), skipped when dx is NULL;
 * dw = x.T @ dy (I, O);  db = dy.sum(0) (O,).   x (B, I), w (I, O), dy (B, O). */
int linear_backward(float *restrict dx, float *restrict dw, float *restrict db,
                    const float *restrict x, const float *restrict w, const float *restrict dy,
                    int64_t B, int64_t I, int64_t O, int scan);

/* Threads the kernels may use (the matmul family, the fused epoch, peak_gflops):
 * initially the CPUs this process may run on, or $FASTSGD_THREADS when that is a positive
 * number below them.  They are the library's own pool (pool.c), not OpenMP. */
int pool_threads(void);

/* Sets that number (clamped to at least 1); returns the previous one. */
int set_pool_threads(int threads);

/* How many times since the process started the pool found its workers held up (over
 * 2 ms, the caller blocked for more than half its work: another process on their
 * cores) and ran the next jobs on the caller alone for a while (pool.c). */
int64_t pool_stalls(void);

/* The matmul micro-kernel in use: "avx512", "avx2" or "baseline" (SSE2 on x86-64, plain
 * C vectors elsewhere), the fastest this CPU runs unless set_matmul_isa chose another. */
const char *matmul_isa(void);

/* Use the named micro-kernel (e.g. to test a slower one); returns 0, or -1 (and changes
 * nothing) when the name is unknown or the CPU cannot run it. */
int set_matmul_isa(const char *name);

/* ------------------------------------------------------ elementwise (pointwise.c) */

/* out = 1 / (1 + exp(-x)), computed as exp(min(x, 0)) / (1 + exp(-|x|)).   x, out (n,). */
void sigmoid_forward(float *out, const float *x, int64_t n);

/* dx = dy * y * (1 - y), y = sigmoid(x) the forward output.   y, dy, dx (n,). */
void sigmoid_backward(float *dx, const float *y, const float *dy, int64_t n);

/* out = max(x, 0), NaN for NaN.   x, out (n,). */
void relu_forward(float *out, const float *x, int64_t n);

/* dx = dy where x > 0, else 0; x the forward input.   x, dy, dx (n,). */
void relu_backward(float *dx, const float *x, const float *dy, int64_t n);

/* out = tanh(x), within a few ulp relative (also near 0), +-1 for large |x|.
 * x, out (n,). */
void tanh_forward(float *out, const float *x, int64_t n);

/* dx = dy * (1 - y * y), y = tanh(x) the forward output.   y, dy, dx (n,). */
void tanh_backward(float *dx, const float *y, const float *dy, int64_t n);

/* The fused epoch's one entry per parameter-free layer kind (fs_layer_kind below):
 * out = layer kind of x;  dx from dy, reading the layer's input x or its output y as
 * its kind needs.   x, y, out, dy, dx (n,).  A kind it lacks leaves out / dx alone. */
void activation_forward(int64_t kind, float *out, const float *x, int64_t n);
void activation_backward(int64_t kind, float *dx, const float *x, const float *y,
                         const float *dy, int64_t n);

/* ----------------------------------------------------------- losses (pointwise.c) */

/* mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,). */
double mnist_loss_forward(const float *restrict preds, const float *restrict targets,
                          int64_t B);

/* dpreds_b = where(t_b == 1, -1, +1) * s_b * (1 - s_b) / B.   (B,) -> dpreds (B,). */
void mnist_loss_backward(float *restrict dpreds, const float *restrict preds,
                         const float *restrict targets, int64_t B);

/* *loss = mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,).
 * Returns how many labels lie outside [0, C); those rows are skipped (then *loss is
 * not meaningful). */
int64_t cross_entropy_forward(double *restrict loss, const float *restrict logits,
                              const int64_t *restrict labels, int64_t B, int64_t C);

/* dlogits = (softmax(logits) - onehot(labels)) / B.   (B, C) -> dlogits (B, C).
 * Returns how many labels lie outside [0, C); those rows get no one-hot term. */
int64_t cross_entropy_backward(float *restrict dlogits, const float *restrict logits,
                               const int64_t *restrict labels, int64_t B, int64_t C);

/* mean_n (preds_n - targets_n)^2, summed in double.   preds, targets (n,): every
 * element of a (B,) or (B, O) batch. */
double mse_forward(const float *restrict preds, const float *restrict targets, int64_t n);

/* dpreds_n = 2 (preds_n - targets_n) / n.   preds, targets (n,) -> dpreds (n,). */
void mse_backward(float *restrict dpreds, const float *restrict preds,
                  const float *restrict targets, int64_t n);

/* The fused epoch's one entry per loss kind (fs_loss_kind below), for rows [0, rows)
 * of a batch of B rows (z, dz, targets, labels start at the first of them): dz = dL/dz
 * of the batch's mean loss there (divided by B, not by rows), and the return value the
 * rows' part of that mean (their mean times rows / B; with rows == B, the mean).
 * z, dz (rows, O); targets (rows, O) for a float-target loss, labels (rows,) in [0, O)
 * for cross-entropy.  NaN for a kind it lacks. */
double loss_rows(int64_t loss_kind, float *dz, const float *z, const float *targets,
                 const int64_t *labels, int64_t rows, int64_t O, int64_t B);

/* --------------------------------------------------------- optimizer (pointwise.c) */

/* One SGD step in place:  g = grad + weight_decay * param;  with velocity (not NULL),
 * velocity = momentum * velocity + g and g = velocity;  param -= lr * g.
 * param, velocity, grad (n,). */
void sgd_update(float *param, float *velocity, const float *grad, int64_t n,
                float lr, float momentum, float weight_decay);

/* ----------------------------------------------------------- metrics (pointwise.c) */

/* mean((preds > 0) == (targets == 1)).   preds, targets (B,). */
double binary_accuracy(const float *restrict preds, const float *restrict targets,
                       int64_t B);

/* mean(argmax(z_b) == label_b), first maximum on ties.   logits (B, C), labels (B,). */
double multiclass_accuracy(const float *restrict logits, const int64_t *restrict labels,
                           int64_t B, int64_t C);

/* ------------------------------------------------------ input checks (pointwise.c) */

/* 1 when no element is NaN or +-Inf, else 0; stops at the first block that has one.
 * The validation of every kernel's float inputs (fastsgd/backends/arrays.py).
 *   x (n,). */
int all_finite_f32(const float *x, int64_t n);
int all_finite_f64(const double *x, int64_t n);

/* ------------------------------------------------------- the machine (peak.c) */

/* fp32 GFLOP/s of independent vector FMA chains on up to `threads` threads (< 1: the
 * pool_threads() count), the best of a few rounds within about `seconds`;
 * *threads_used (unless NULL) gets the threads that ran. */
double peak_gflops(double seconds, int threads, int *threads_used);

/* The vector width peak_gflops runs: "avx512", "avx2" or "baseline". */
const char *peak_isa(void);

/* ------------------------------------------------------ fused epoch (train.c) */

/* One row of a layer program (fastsgd/backends/program.py): the same four int64 as a
 * row of its (L, 4) table.  LINEAR: w (n_in, n_out) at params + param, b (n_out,)
 * right after it; an activation keeps its width and has param -1. */
typedef struct {
    int64_t kind, n_in, n_out, param;
} fs_layer;

/* Layer kinds and loss kinds, the codes of program.py. */
enum fs_layer_kind { FS_LINEAR = 0, FS_RELU = 1, FS_SIGMOID = 2, FS_TANH = 3 };
enum fs_loss_kind { FS_MNIST_LOSS = 0, FS_CROSS_ENTROPY = 1, FS_MSE = 2 };

/* One epoch of SGD over the layer program layers (L,); returns the steps done:
 * steps = ceil(N / bs), or s when the loss of step s is not finite (losses[s] is
 * written, that step's update skipped), or -1 when scratch memory cannot be allocated.
 *   order (N,) indices of rows of x (I = layers[0].n_in wide) and of the targets or
 *   labels, each in range (x may hold more rows than N: a part of an epoch); O =
 *   layers[L-1].n_out;  lrs, losses (steps,);  params, grads, velocities (P,) the flat blocks,
 *   velocities NULL for plain SGD (momentum unused).
 *   loss_kind FS_MNIST_LOSS: targets (rows, 1) 0/1, O == 1;  FS_MSE: targets (rows, O);
 *   both with n_targets_cols = 1 or O, labels unused (may be NULL).  FS_CROSS_ENTROPY:
 *   labels (rows,) in [0, O), targets unused (may be NULL).
 * Per step s, with batch rows order[s*bs : s*bs + B]: gather, forward through the
 * layers, loss and its gradient, backward in reverse down to the first LINEAR (no
 * input gradient for it), then one SGD update of the whole block with lr = lrs[s]:
 * g = grads + weight_decay * params;  v = momentum * v + g, g = v (with velocities);
 * params -= lr * g. */
int64_t train_epoch(double *restrict losses, float *params, float *grads, float *velocities,
                    const fs_layer *restrict layers, int64_t L, int loss_kind,
                    const float *restrict x, const float *restrict targets,
                    int64_t n_targets_cols, const int64_t *restrict labels,
                    const int64_t *restrict order, const float *restrict lrs, int64_t N,
                    int64_t bs, int64_t P, float momentum, float weight_decay);

#endif /* FASTSGD_KERNELS_H */
