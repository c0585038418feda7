/* matmul.cl - batched strided out = alpha * a @ b + beta * out, tiled in local memory (16x16
 * work-groups), plus a one-work-item-per-output version for devices with small work-groups. */
#if IS_FLOAT
#define NBK_TS 16

__kernel void matmul(__global T *out, __global const T *a, __global const T *b, nbk_mm g,
                     T alpha, T beta)
{
    __local T as[NBK_TS][NBK_TS + 1], bs[NBK_TS][NBK_TS + 1];
    int tx = get_local_id(0), ty = get_local_id(1);
    long col = get_global_id(0), row = get_global_id(1), bt = get_global_id(2);
    long ab = g.off[1] + bt * g.st[1][0], bb = g.off[2] + bt * g.st[2][0];
    T acc = 0;
    /* every work-item takes part in the barriers, even outside the output */
    for (long k0 = 0; k0 < g.k; k0 += NBK_TS) {
        long ka = k0 + tx, kb = k0 + ty;
        as[ty][tx] = (row < g.m && ka < g.k) ? a[ab + row * g.st[1][1] + ka * g.st[1][2]] : 0;
        bs[ty][tx] = (kb < g.k && col < g.n) ? b[bb + kb * g.st[2][1] + col * g.st[2][2]] : 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < NBK_TS; kk++)
            acc += as[ty][kk] * bs[kk][tx];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < g.m && col < g.n) {
        long oo = g.off[0] + bt * g.st[0][0] + row * g.st[0][1] + col * g.st[0][2];
        out[oo] = beta == 0 ? alpha * acc : alpha * acc + beta * out[oo]; /* beta 0: not read */
    }
}

__kernel void matmul_naive(__global T *out, __global const T *a, __global const T *b, nbk_mm g,
                           T alpha, T beta)
{
    long col = get_global_id(0), row = get_global_id(1), bt = get_global_id(2);
    if (row >= g.m || col >= g.n)
        return;
    long ao = g.off[1] + bt * g.st[1][0] + row * g.st[1][1];
    long bo = g.off[2] + bt * g.st[2][0] + col * g.st[2][2];
    T acc = 0;
    for (long k = 0; k < g.k; k++)
        acc += a[ao + k * g.st[1][2]] * b[bo + k * g.st[2][1]];
    long oo = g.off[0] + bt * g.st[0][0] + row * g.st[0][1] + col * g.st[0][2];
    out[oo] = beta == 0 ? alpha * acc : alpha * acc + beta * out[oo];
}
#endif
