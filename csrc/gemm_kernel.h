/* gemm_kernel.h -- the register-blocked micro-kernel, its loop over one block of C and
 * the packing of A into its panels, for one instruction set.  gemm.c includes this file
 * once per instruction set, after defining:
 *
 *   GK_NAME    name of the block function to define
 *   GK_PACK_A  name of the A-packing function to define
 *   GK_TARGET  its GCC target attribute, e.g. __attribute__((target("arch=x86-64-v4"))),
 *              or nothing
 *   GK_VEC     the vector type (a GCC vector of GK_LANES floats)
 *   GK_LANES   floats per vector
 *   GK_MR      rows of a C tile
 *   GK_NV      vectors per row of a C tile, so NR = GK_NV * GK_LANES columns
 *
 * The tile, GK_MR x GK_NV vectors, must fit in the instruction set's registers with
 * room for GK_NV vectors of B and a broadcast: 8 x 2 of 16 floats for AVX-512 (32
 * registers), 6 x 2 of 8 for AVX2 (16), 6 x 2 of 4 for SSE2 (16).  The same source
 * compiled with a tile too big for the registers ran 40 times slower.
 *
 * Packed layouts (see pack_a / pack_b_panel in gemm.c): a B panel is bp[k * NR + j];
 * an A panel is row-major with row stride A_LD, ap[i * A_LD + k], or depth-major,
 * ap[k * GK_MR + i].
 */
#define GK_NR (GK_NV * GK_LANES)
#define GK_LINES_AHEAD 6 /* depths ahead that the tile fetches x[rows].T's line (GK_TILE) */
#define GK_HEAD_LINES 4  /* lines fetched at the start of each next row of x[rows] (GK_NAME) */
#define GK_JOIN2(a, b) a##b
#define GK_JOIN(a, b) GK_JOIN2(a, b)
#define GK_TILE GK_JOIN(GK_NAME, _tile)
/* GK_EACH_VECTOR(i, v) statement: the statement for each vector v of each row i of a
 * tile, both loops unrolled in full. */
#define GK_EACH_VECTOR(i, v)                                                          \
    _Pragma("GCC unroll 8") for (int i = 0; i < GK_MR; i++)                           \
        _Pragma("GCC unroll 4") for (int v = 0; v < GK_NV; v++)

/* Packs rows [i0, i0 + mc) x depths [p0, p0 + kc) of A, in panels of GK_MR rows.
 * Row-major A (not transposed): a panel is GK_MR rows of stride A_LD, ap[i * A_LD + k]
 * (row copies).  Transposed A (A = x.T): a panel is depth-major, ap[k * GK_MR + i]
 * (GK_MR contiguous floats of x per depth).  Rows of x come through view_line (A.rows,
 * gemm.c).  Rows past the end of the block are zero-filled: the micro-kernel always
 * runs a full tile.   ap (ceil(mc / GK_MR) * GK_MR * A_LD) floats. */
GK_TARGET static void GK_PACK_A(float *restrict ap, view A, int64_t i0, int64_t mc,
                                int64_t p0, int64_t kc)
{
    for (int64_t ir = 0; ir < mc; ir += GK_MR) {
        const int64_t m = mc - ir < GK_MR ? mc - ir : GK_MR;
        if (!A.transposed) {
            float *panel = ap + ir * A_LD;
            for (int64_t i = 0; i < GK_MR; i++) {
                if (i < m)
                    memcpy(panel + i * A_LD, view_line(A, i0 + ir + i) + p0,
                           (size_t)kc * sizeof(float));
                else
                    memset(panel + i * A_LD, 0, (size_t)kc * sizeof(float));
            }
        } else if (m == GK_MR) {
            float *panel = ap + ir * kc;
            for (int64_t k = 0; k < kc; k++) /* a fixed-size copy: a move or two */
                memcpy(panel + k * GK_MR, view_line(A, p0 + k) + i0 + ir,
                       GK_MR * sizeof(float));
        } else {
            float *panel = ap + ir * kc;
            for (int64_t k = 0; k < kc; k++) {
                const float *src = view_line(A, p0 + k) + i0 + ir;
                for (int64_t i = 0; i < GK_MR; i++)
                    panel[k * GK_MR + i] = i < m ? src[i] : 0.0f;
            }
        }
    }
}

/* One tile:  c (m, n) (+)= a (GK_MR, kc) @ b (kc, GK_NR), the valid m <= GK_MR rows and
 * n <= GK_NR columns written with row stride ldc.  a is read as a[i * a_rs + k * a_cs],
 * or, with a_lines, as a[a_lines[k] * a_cs + i * a_rs] (the unpacked x[rows].T, a_rs 1;
 * fetch_lines: the rows are scattered, fetch their lines ahead), or, with a_rows, as
 * a_rows[i][k] (the unpacked rows of x[rows]),
 * b as b[k * ldb + j] (a packed panel, ldb = GK_NR, or B itself); the strides are
 * constants after inlining, except B's.  With accumulate the tile is added to c;
 * otherwise it replaces c, plus bias (GK_NR floats, or NULL) along the columns.  With
 * nan_sum (else NULL), the tile's final values are checked as they are stored: v - v is
 * 0 for every finite v and NaN otherwise, added into *nan_sum (a full tile) or, for an
 * edge tile, summed and *bad set at once. */
GK_TARGET FS_INLINE void GK_TILE(float *restrict c, int64_t ldc, int64_t m, int64_t n,
                                 int64_t kc, const float *restrict a, int64_t a_rs,
                                 int64_t a_cs, const int64_t *restrict a_lines,
                                 const float *const *restrict a_rows,
                                 int fetch_lines, const float *restrict b, int64_t ldb,
                                 int accumulate, const float *restrict bias,
                                 GK_VEC *restrict nan_sum, int *restrict bad)
{
    const float *row_of[GK_MR]; /* with a_rows: A's rows, in registers */
    for (int i = 0; i < GK_MR; i++)
        row_of[i] = a_rows ? a_rows[i] : NULL;
    GK_VEC acc[GK_MR][GK_NV];
    GK_EACH_VECTOR(i, v)
        acc[i][v] = (GK_VEC){0};

    for (int64_t k = 0; k < kc; k++) {
        GK_VEC bk[GK_NV];
#pragma GCC unroll 4
        for (int v = 0; v < GK_NV; v++)
            memcpy(&bk[v], b + k * ldb + v * GK_LANES, sizeof bk[v]);
        /* with a_lines, depth k of the panel is GK_MR floats of line a_lines[k]; with
         * fetch_lines, the line GK_LINES_AHEAD depths on is fetched now: a batch's rows
         * are scattered over x, so no hardware prefetcher can guess the next one (x[rows].T
         * @ dy, 2 threads, 256x784x128 after the forward: 147 -> 133 us; harness epoch
         * 784-128-10 bs 256 66.6 -> 63.1 ms).  Consecutive rows need no help: there the
         * fetches cost 4% (64x784x128). */
        const float *a_k = a_rows ? NULL : a_lines ? a + a_lines[k] * a_cs : a + k * a_cs;
        if (fetch_lines && k + GK_LINES_AHEAD < kc)
            __builtin_prefetch(a + a_lines[k + GK_LINES_AHEAD] * a_cs, 0, 3);
#pragma GCC unroll 8
        for (int i = 0; i < GK_MR; i++) {
            const float a_ik = a_rows ? row_of[i][k] : a_k[i * a_rs];
#pragma GCC unroll 4
            for (int v = 0; v < GK_NV; v++)
                acc[i][v] += a_ik * bk[v];
        }
    }

    if (m == GK_MR && n == GK_NR) {
#pragma GCC unroll 8
        for (int i = 0; i < GK_MR; i++) {
            float *row = c + i * ldc;
#pragma GCC unroll 4
            for (int v = 0; v < GK_NV; v++) {
                GK_VEC old;
                if (accumulate) {
                    memcpy(&old, row + v * GK_LANES, sizeof old);
                    acc[i][v] += old;
                } else if (bias) {
                    memcpy(&old, bias + v * GK_LANES, sizeof old);
                    acc[i][v] += old;
                }
                memcpy(row + v * GK_LANES, &acc[i][v], sizeof acc[i][v]);
            }
        }
        if (nan_sum) { /* summed as a tree: no chain of dependent adds per tile */
            GK_VEC d[GK_MR * GK_NV];
            GK_EACH_VECTOR(i, v)
                d[i * GK_NV + v] = acc[i][v] - acc[i][v];
#pragma GCC unroll 8
            for (int n = GK_MR * GK_NV; n > 1; n = (n + 1) / 2)
#pragma GCC unroll 16
                for (int k = 0; k < n / 2; k++)
                    d[k] += d[k + (n + 1) / 2];
            *nan_sum += d[0];
        }
    } else { /* an edge tile: spill it, then write the valid part */
        float tile[GK_MR][GK_NR];
        GK_EACH_VECTOR(i, v)
            memcpy(&tile[i][v * GK_LANES], &acc[i][v], sizeof acc[i][v]);
        float edge_nan = 0.0f;
        for (int64_t i = 0; i < m; i++) {
            float *row = c + i * ldc;
            for (int64_t j = 0; j < n; j++) {
                float base = accumulate ? row[j] : bias ? bias[j] : 0.0f;
                row[j] = base + tile[i][j];
                edge_nan += row[j] - row[j];
            }
        }
        if (nan_sum && edge_nan != edge_nan)
            *bad = 1;
    }
}

/* c (mc, nc) (+)= A-block @ B-block, kc deep; ldc the row stride of c.  ap is the
 * packed A block (row-major panels when a_rowmajor), or, with a_lines, x[rows].T read in
 * place: ap = x + the block's first column, A[i][k] = ap[a_lines[k] * a_ld + i] (then
 * B must be read in place, and every panel of the block be whole: mc % GK_MR == 0, so
 * no read passes the block's columns; fetch_lines as in the tile), or with a_lines and
 * a_rowmajor x[rows] read in place: A[i][k] = ap[a_lines[i] * a_ld + k] (the rows past
 * an edge panel's end read its first row again, and are not stored; fetch_lines: the
 * next panel's rows are fetched ahead, see below).  B is either packed panels, each
 * laid out panel_depth >= kc deep, b[jr * panel_depth + k * GK_NR + j] (ldb == 0), or
 * read in place, b[k * ldb + jr + j], when it is row-major and nc a multiple of GK_NR.
 * accumulate and bias as in the tile; with bad (else NULL), *bad is set when a value
 * stored is NaN or +-Inf (the block's last depths: its final values). */
GK_TARGET static void GK_NAME(float *restrict c, int64_t ldc, int64_t mc, int64_t nc,
                              int64_t kc, const float *restrict ap, int a_rowmajor,
                              const int64_t *restrict a_lines, int64_t a_ld, int fetch_lines,
                              const float *restrict b, int64_t ldb, int64_t panel_depth,
                              int accumulate, const float *restrict bias, int *restrict bad)
{
    GK_VEC nan_sum = {0};
    GK_VEC *const sum = bad ? &nan_sum : NULL;
    for (int64_t ir = 0; ir < mc; ir += GK_MR) {
        const int64_t m = mc - ir < GK_MR ? mc - ir : GK_MR;
        const float *a_panel = a_lines ? ap + ir : ap + ir * (a_rowmajor ? A_LD : kc);
        const float *a_rows[GK_MR] = {0}; /* x[rows] read in place: the panel's rows */
        for (int i = 0; a_lines && a_rowmajor && i < GK_MR; i++)
            a_rows[i] = ap + a_lines[ir + (i < m ? i : 0)] * a_ld;
        /* with fetch_lines, the next panel's rows of x[rows]: their first lines are
         * fetched while this panel runs, and the hardware's prefetcher, which follows
         * each row once it has missed on it, then starts them early (784-128-10, harness
         * epoch, 1 GB read between epochs so that x comes from memory, as it does when it
         * exceeds the last-level cache: bs 64 75.5 -> 73.5 ms, bs 256 65.0 -> 64.6; x in
         * the cache: no change) */
        const int64_t next_rows = a_lines && a_rowmajor && fetch_lines && ir + GK_MR < mc
                                      ? (mc - ir - GK_MR < GK_MR ? mc - ir - GK_MR : GK_MR)
                                      : 0;
        for (int64_t i = 0; i < next_rows; i++)
            for (int64_t l = 0; l < GK_HEAD_LINES && 16 * l < kc; l++)
                __builtin_prefetch(ap + a_lines[ir + GK_MR + i] * a_ld + 16 * l, 0, 3);
        for (int64_t jr = 0; jr < nc; jr += GK_NR) {
            const int64_t n = nc - jr < GK_NR ? nc - jr : GK_NR;
            float *tile = c + ir * ldc + jr;
            const float *tile_bias = bias ? bias + jr : NULL;
            if (a_lines && a_rowmajor) /* x[rows] read in place, B too (the forward) */
                GK_TILE(tile, ldc, m, n, kc, NULL, 0, 0, NULL, a_rows, 0, b + jr, ldb,
                        accumulate, tile_bias, sum, bad);
            else if (a_lines) /* x[rows].T read in place, B too (the weight gradient) */
                GK_TILE(tile, ldc, m, n, kc, a_panel, 1, a_ld, a_lines, NULL, fetch_lines,
                        b + jr, ldb, accumulate, tile_bias, sum, bad);
            else if (ldb == 0 && a_rowmajor)
                GK_TILE(tile, ldc, m, n, kc, a_panel, A_LD, 1, NULL, NULL, 0,
                        b + jr * panel_depth, GK_NR, accumulate, tile_bias, sum, bad);
            else if (ldb == 0)
                GK_TILE(tile, ldc, m, n, kc, a_panel, 1, GK_MR, NULL, NULL, 0,
                        b + jr * panel_depth, GK_NR, accumulate, tile_bias, sum, bad);
            else if (a_rowmajor)
                GK_TILE(tile, ldc, m, n, kc, a_panel, A_LD, 1, NULL, NULL, 0, b + jr, ldb,
                        accumulate, tile_bias, sum, bad);
            else
                GK_TILE(tile, ldc, m, n, kc, a_panel, 1, GK_MR, NULL, NULL, 0, b + jr, ldb,
                        accumulate, tile_bias, sum, bad);
        }
    }
    if (bad)
        for (int l = 0; l < GK_LANES; l++)
            if (nan_sum[l] != nan_sum[l])
                *bad = 1;
}

#undef GK_NR
#undef GK_LINES_AHEAD
#undef GK_HEAD_LINES
#undef GK_JOIN2
#undef GK_JOIN
#undef GK_TILE
#undef GK_EACH_VECTOR
#undef GK_NAME
#undef GK_PACK_A
#undef GK_TARGET
#undef GK_VEC
#undef GK_LANES
#undef GK_MR
#undef GK_NV
