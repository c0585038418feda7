/* index.cl - gather and scatter_add along one dim, and the index range check both run first. */

/* flag[0] = 1 and flag[1] = the index when any index is outside [0, size). */
__kernel void index_check(__global const long *idx, nbk_geom g, long size,
                          __global long *flag)
{
    NBK_ELEMENT(1);
    long v = idx[o[0]];
    if (v < 0 || v >= size) {
        flag[0] = 1;
        flag[1] = v;
    }
}

/* Operands: 0 out, 1 data (its stride along dim set to 0), 2 index; dstride is data's stride
 * along dim. */
__kernel void gather(__global T *out, __global const T *data, __global const long *idx,
                     nbk_geom g, long dstride)
{
    NBK_ELEMENT(3);
    out[o[0]] = data[o[1] + idx[o[2]] * dstride];
}

/* One work-item per line along dim: operands 0 out (stride along dim set to 0), 1 index,
 * 2 src, over the index's shape with dim collapsed. Distinct lines write distinct output
 * elements, so no atomics are needed and the sums come out in a fixed order. */
__kernel void scatter_add(__global T *out, __global const long *idx, __global const T *src,
                          nbk_geom g, long len, long ost, long ist, long sst)
{
    NBK_ELEMENT(3);
    for (long j = 0; j < len; j++) {
        long t = o[0] + idx[o[1] + j * ist] * ost;
#if IS_BOOL
        out[t] = (out[t] | src[o[2] + j * sst]) != 0;
#else
        out[t] += src[o[2] + j * sst];
#endif
    }
}
