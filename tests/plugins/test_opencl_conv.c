/* test_opencl_conv.c - the opencl plugin's conv kernels (opencl_conv.c): conv2d and its
 * gradients, max_pool2d. Part of test_opencl_kernels (main and helpers in
 * test_opencl_kernels.c). */
#include "test_opencl.h"

void ref_conv2d(const conv_ref *g, const double *x, const double *w, const double *gy, double *y,
                double *gx, double *gw)
{
    const int OH = (g->H + 2 * g->PH - g->DH * (g->KH - 1) - 1) / g->SH + 1;
    const int OW = (g->W + 2 * g->PW - g->DW * (g->KW - 1) - 1) / g->SW + 1;
    const int CG = g->C / g->G, OG = g->O / g->G;
    const int64_t dense[4] = {(int64_t)CG * g->KH * g->KW, (int64_t)g->KH * g->KW, g->KW, 1};
    const int64_t *ws = g->w_st ? g->w_st : dense;
    memset(gx, 0, sizeof *gx * (size_t)g->N * g->C * g->H * g->W);
    memset(gw, 0, sizeof *gw * (size_t)(ws[0] * (g->O - 1) + ws[1] * (CG - 1) +
                                        ws[2] * (g->KH - 1) + ws[3] * (g->KW - 1) + 1));
    for (int n = 0; n < g->N; n++)
        for (int o = 0; o < g->O; o++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double acc = 0;
                    size_t yi = (size_t)((n * g->O + o) * OH + oh) * OW + ow;
                    for (int c = 0; c < CG; c++)
                        for (int a = 0; a < g->KH; a++)
                            for (int b = 0; b < g->KW; b++) {
                                int ih = oh * g->SH - g->PH + a * g->DH;
                                int iw = ow * g->SW - g->PW + b * g->DW;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                                    continue;
                                size_t xi = (size_t)((n * g->C + o / OG * CG + c) * g->H + ih) *
                                                g->W + iw;
                                size_t wi = (size_t)(o * ws[0] + c * ws[1] + a * ws[2] + b * ws[3]);
                                acc += x[xi] * w[wi];
                                gx[xi] += gy[yi] * w[wi];
                                gw[wi] += gy[yi] * x[xi];
                            }
                    y[yi] = acc;
                }
}

void ref_max_pool2d(int nc, int H, int W, int K, int S, int PD, const double *x,
                    const double *gy, double *y, int64_t *idx, double *gx)
{
    const int OH = (H + 2 * PD - K) / S + 1, OW = (W + 2 * PD - K) / S + 1;
    memset(gx, 0, sizeof *gx * (size_t)nc * H * W);
    for (int p = 0; p < nc; p++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                double best = -INFINITY;
                int64_t bi = -1;
                for (int a = oh * S - PD; a < oh * S - PD + K; a++)
                    for (int b = ow * S - PD; b < ow * S - PD + K; b++)
                        if (a >= 0 && a < H && b >= 0 && b < W && x[p * H * W + a * W + b] > best) {
                            best = x[p * H * W + a * W + b];
                            bi = a * W + b;
                        }
                size_t q = (size_t)(p * OH + oh) * OW + ow;
                y[q] = best;
                idx[q] = bi;
                gx[p * H * W + bi] += gy[q];
            }
}

/* conv2d with groups 2, stride (2,1), padding (1,1), dilation (1,2) against direct loops, and
 * its two gradients against the loops' adjoints. */
void conv2d_and_its_gradients_match_direct_loops(void **state)
{
    (void)state;
    enum { N = 2, C = 4, H = 7, W = 6, O = 6, G = 2, KH = 3, KW = 2, SH = 2, SW = 1, PH = 1,
           PW = 1, DH = 1, DW = 2 };
    enum { OH = (H + 2 * PH - DH * (KH - 1) - 1) / SH + 1,
           OW = (W + 2 * PW - DW * (KW - 1) - 1) / SW + 1, CG = C / G, OG = O / G };
    static float x[N * C * H * W], w[O * CG * KH * KW], gy[N * O * OH * OW];
    static float y[N * O * OH * OW], gx[N * C * H * W], gw[O * CG * KH * KW];
    static double ry[N * O * OH * OW], rgx[N * C * H * W], rgw[O * CG * KH * KW];
    static double xd[N * C * H * W], wd[O * CG * KH * KW], gyd[N * O * OH * OW];
    unsigned seed = 21;
    for (size_t k = 0; k < sizeof x / sizeof x[0]; k++)
        xd[k] = x[k] = frand(&seed);
    for (size_t k = 0; k < sizeof w / sizeof w[0]; k++)
        wd[k] = w[k] = frand(&seed);
    for (size_t k = 0; k < sizeof gy / sizeof gy[0]; k++)
        gyd[k] = gy[k] = frand(&seed);
    ref_conv2d(&(conv_ref){N, C, H, W, O, G, KH, KW, SH, SW, PH, PW, DH, DW, NULL}, xd, wd, gyd,
               ry, rgx, rgw);
    void *hx = buf_from(x, sizeof x), *hw = buf_from(w, sizeof w), *hgy = buf_from(gy, sizeof gy);
    void *hy = buf_new(sizeof y), *hgx = buf_new(sizeof gx), *hgw = buf_new(sizeof gw);
    tview vx = view(hx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    tview vw = view(hw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, CG, KH, KW}, NULL);
    tview vy = view(hy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, O, OH, OW}, NULL);
    tview vgy = view(hgy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, O, OH, OW}, NULL);
    tview vgx = view(hgx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    tview vgw = view(hgw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, CG, KH, KW}, NULL);
    int64_t i[8] = {SH, SW, PH, PW, DH, DW, G};
    tview fin[2] = {vx, vw}, bin[2] = {vgy, vw}, win[2] = {vgy, vx};
    assert_int_equal(run("conv2d", NB_DTYPE_F32, &vy, 2, fin, NULL, i), NB_OK);
    assert_int_equal(run("conv2d_backward_input", NB_DTYPE_F32, &vgx, 2, bin, NULL, i), NB_OK);
    assert_int_equal(run("conv2d_backward_weight", NB_DTYPE_F32, &vgw, 2, win, NULL, i), NB_OK);
    buf_read(hy, y, sizeof y);
    buf_read(hgx, gx, sizeof gx);
    buf_read(hgw, gw, sizeof gw);
    /* f32 sums of a few dozen (weight grad: a few hundred) products of numbers below 4 */
    for (size_t k = 0; k < sizeof y / sizeof y[0]; k++)
        expect_close("conv2d", k, y[k], ry[k], 1e-5, 1e-5);
    for (size_t k = 0; k < sizeof gx / sizeof gx[0]; k++)
        expect_close("conv2d_backward_input", k, gx[k], rgx[k], 1e-5, 1e-5);
    for (size_t k = 0; k < sizeof gw / sizeof gw[0]; k++)
        expect_close("conv2d_backward_weight", k, gw[k], rgw[k], 1e-4, 1e-5);
    /* a weight that does not fit the groups is refused */
    tview bad = view(hw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, C, 1, 1}, NULL);
    tview badin[2] = {vx, bad};
    assert_int_equal(run("conv2d", NB_DTYPE_F32, &vy, 2, badin, NULL, i), NB_SHAPE_MISMATCH);
    P->free(0, hx);
    P->free(0, hw);
    P->free(0, hgy);
    P->free(0, hy);
    P->free(0, hgx);
    P->free(0, hgw);
}

/* The direct kernels' vector pieces (conv.cl): rows of 37 columns (two full 16-lane pieces and
 * a partial one), 10 output channels (a full block of 8 and a partial one), padding 2 on the
 * columns, column stride 1 and 2, x stored contiguously or with its last two dims swapped (the
 * gather path). Every buffer has NaN before and after the tensor, so a lane that reads past a
 * row and is not masked out shows up as NaN; and a forward with an inf weight gives inf (or
 * NaN where x is 0) only where that tap is inside the row, as direct loops do. */
void direct_convs_mask_row_ends_padding_and_strides(void **state)
{
    (void)state;
    enum { N = 2, C = 3, H = 4, W = 37, O = 10, KH = 3, KW = 3, PH = 1, PW = 2, GUARD = 40 };
    enum { XN = N * C * H * W, WN = O * C * KH * KW, OWMAX = W + 2 * PW - KW + 1 };
    enum { YN = N * O * H * OWMAX };
    static float xs[XN + 2 * GUARD], ws[WN], gys[YN + 2 * GUARD], y[YN], gx[XN], gw[WN];
    static float xv[XN], gyv[YN];
    static double ry[YN], rgx[XN], rgw[WN], xd[XN], wd[WN], gyd[YN];
    setenv("NABLA_OPENCL_CONV", "direct", 1);
    for (int sw = 1; sw <= 2; sw++)
        for (int layout = 0; layout < 2; layout++)
            for (int inf_w = 0; inf_w < 2; inf_w++) {
                const int OH = H + 2 * PH - KH + 1, OW = (W + 2 * PW - KW) / sw + 1;
                unsigned seed = 77 + sw + 2 * layout;
                for (int k = 0; k < XN; k++)
                    xv[k] = frand(&seed);
                for (int k = 0; k < WN; k++)
                    ws[k] = frand(&seed);
                for (int k = 0; k < N * O * OH * OW; k++)
                    gyv[k] = frand(&seed);
                if (inf_w)
                    ws[0] = INFINITY; /* o 0, c 0, tap (0, 0): in the padding at ow 0 and 1 */
                /* x (N,C,H,W) stored as (N,C,H,W) or (N,C,W,H), between NaN guards */
                const int64_t xst[2][4] = {{C * H * W, H * W, W, 1}, {C * H * W, H * W, 1, H}};
                for (int k = 0; k < XN + 2 * GUARD; k++)
                    xs[k] = NAN;
                for (int n = 0; n < N; n++)
                    for (int c = 0; c < C; c++)
                        for (int h = 0; h < H; h++)
                            for (int iw = 0; iw < W; iw++)
                                xs[GUARD + n * xst[layout][0] + c * xst[layout][1] +
                                   h * xst[layout][2] + iw * xst[layout][3]] =
                                    xv[((n * C + c) * H + h) * W + iw];
                for (int k = 0; k < YN + 2 * GUARD; k++)
                    gys[k] = NAN;
                memcpy(gys + GUARD, gyv, sizeof(float) * (size_t)(N * O * OH * OW));
                for (int k = 0; k < XN; k++)
                    xd[k] = xv[k];
                for (int k = 0; k < WN; k++)
                    wd[k] = ws[k];
                for (int k = 0; k < N * O * OH * OW; k++)
                    gyd[k] = gyv[k];
                ref_conv2d(&(conv_ref){N, C, H, W, O, 1, KH, KW, 1, sw, PH, PW, 1, 1, NULL}, xd,
                           wd, gyd, ry, rgx, rgw);
                void *hx = buf_from(xs, sizeof xs), *hw = buf_from(ws, sizeof ws);
                void *hgy = buf_from(gys, sizeof gys), *hy = buf_new(sizeof y);
                void *hgx = buf_new(sizeof gx), *hgw = buf_new(sizeof gw);
                tview vx = view(hx, GUARD, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, xst[layout]);
                tview vw = view(hw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, C, KH, KW}, NULL);
                tview vy = view(hy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, O, OH, OW}, NULL);
                tview vgy = view(hgy, GUARD, NB_DTYPE_F32, 4, (int64_t[]){N, O, OH, OW}, NULL);
                tview vgx = view(hgx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
                tview vgw = view(hgw, 0, NB_DTYPE_F32, 4, (int64_t[]){O, C, KH, KW}, NULL);
                int64_t i[8] = {1, sw, PH, PW, 1, 1, 1};
                tview fin[2] = {vx, vw}, bin[2] = {vgy, vw}, win[2] = {vgy, vx};
                char what[64];
                assert_int_equal(run("conv2d", NB_DTYPE_F32, &vy, 2, fin, NULL, i), NB_OK);
                buf_read(hy, y, sizeof y);
                snprintf(what, sizeof what, "conv2d sw %d layout %d inf %d", sw, layout, inf_w);
                for (int k = 0; k < N * O * OH * OW; k++)
                    expect_close(what, (size_t)k, y[k], ry[k], 1e-5, 1e-5);
                if (!inf_w) { /* the gradients with finite weights only */
                    assert_int_equal(
                        run("conv2d_backward_input", NB_DTYPE_F32, &vgx, 2, bin, NULL, i), NB_OK);
                    assert_int_equal(
                        run("conv2d_backward_weight", NB_DTYPE_F32, &vgw, 2, win, NULL, i), NB_OK);
                    buf_read(hgx, gx, sizeof gx);
                    buf_read(hgw, gw, sizeof gw);
                    snprintf(what, sizeof what, "conv2d_backward_input sw %d layout %d", sw,
                             layout);
                    for (int k = 0; k < XN; k++)
                        expect_close(what, (size_t)k, gx[k], rgx[k], 1e-5, 1e-5);
                    snprintf(what, sizeof what, "conv2d_backward_weight sw %d layout %d", sw,
                             layout);
                    for (int k = 0; k < WN; k++) /* sums of ~500 products below 4 */
                        expect_close(what, (size_t)k, gw[k], rgw[k], 1e-4, 1e-5);
                }
                P->free(0, hx);
                P->free(0, hw);
                P->free(0, hgy);
                P->free(0, hy);
                P->free(0, hgx);
                P->free(0, hgw);
            }
    unsetenv("NABLA_OPENCL_CONV");
}

/* 3x3 windows, stride 2, padding 1 over values with ties: the first maximum wins, and the
 * backward adds each window's gradient at its argmax (overlapping windows add up). */
void max_pool2d_picks_first_maximum_and_routes_gradients(void **state)
{
    (void)state;
    enum { N = 2, C = 3, H = 7, W = 7, K = 3, S = 2, PD = 1, OH = (H + 2 * PD - K) / S + 1,
           OW = OH };
    static float x[N * C * H * W], y[N * C * OH * OW], gy[N * C * OH * OW], gx[N * C * H * W];
    static int64_t idx[N * C * OH * OW], ridx[N * C * OH * OW];
    static double rgx[N * C * H * W], ry[N * C * OH * OW], xd[N * C * H * W], gyd[N * C * OH * OW];
    unsigned seed = 23;
    for (size_t k = 0; k < sizeof x / sizeof x[0]; k++)
        xd[k] = x[k] = (float)((int)(frand(&seed) * 2)); /* few distinct values: many ties */
    for (size_t k = 0; k < sizeof gy / sizeof gy[0]; k++)
        gyd[k] = gy[k] = frand(&seed);
    void *hx = buf_from(x, sizeof x), *hy = buf_new(sizeof y), *hi = buf_new(sizeof idx);
    void *hgy = buf_from(gy, sizeof gy), *hgx = buf_new(sizeof gx);
    tview vx = view(hx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    tview vy = view(hy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, OH, OW}, NULL);
    tview vi = view(hi, 0, NB_DTYPE_I64, 4, (int64_t[]){N, C, OH, OW}, NULL);
    tview vgy = view(hgy, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, OH, OW}, NULL);
    tview vgx = view(hgx, 0, NB_DTYPE_F32, 4, (int64_t[]){N, C, H, W}, NULL);
    int64_t i[8] = {K, K, S, S, PD, PD};
    tview fin[2] = {vx, vi}, bin[2] = {vgy, vi};
    assert_int_equal(run("max_pool2d", NB_DTYPE_F32, &vy, 2, fin, NULL, i), NB_OK);
    assert_int_equal(run("max_pool2d_backward", NB_DTYPE_F32, &vgx, 2, bin, NULL, i), NB_OK);
    buf_read(hy, y, sizeof y);
    buf_read(hi, idx, sizeof idx);
    buf_read(hgx, gx, sizeof gx);
    ref_max_pool2d(N * C, H, W, K, S, PD, xd, gyd, ry, ridx, rgx);
    for (size_t q = 0; q < sizeof y / sizeof y[0]; q++) {
        assert_true(y[q] == ry[q]);
        assert_int_equal(idx[q], ridx[q]);
    }
    for (size_t k = 0; k < sizeof gx / sizeof gx[0]; k++)
        expect_close("max_pool2d_backward", k, gx[k], rgx[k], 1e-6, 1e-6);
    P->free(0, hx);
    P->free(0, hy);
    P->free(0, hi);
    P->free(0, hgy);
    P->free(0, hgx);
}
