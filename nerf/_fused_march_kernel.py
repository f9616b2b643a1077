"""The Triton kernel of ``nerf.fused_march`` (imported on first use: importing the package never imports triton).

``triton.jit`` decides when it decorates whether a kernel is compiled or run by Triton's CPU interpreter
(``TRITON_INTERPRET=1``, read when triton is first imported). The hash primes are ``nerf.encoding.HASH_PRIMES``
written out (a kernel reads no Python globals); the parity tests, which hash, hold them equal.
"""

import triton
import triton.language as tl


@triton.jit
def march_head_kernel(
        o_ptr, d_ptr, c_ptr, rad_ptr, t0_ptr, dt_ptr, n_ptr, near_ptr, far_ptr, row_ptr, pre_d_ptr, pre_c_ptr,
        occ_ptr, tab_ptr, scale_ptr, res_ptr, size_ptr,
        w1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, wc1_ptr, wc2_ptr, bc2_ptr, wc3_ptr, bc3_ptr,
        rgb_ptr, acc_ptr, cnt_ptr,
        R, G, stop_depth,
        L: tl.constexpr, N_DENSE: tl.constexpr, T: tl.constexpr, H: tl.constexpr, BLOCK_R: tl.constexpr,
        HALF: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rays = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rays < R
    cols = tl.arange(0, H)
    c16 = tl.arange(0, 16)
    ox = tl.load(o_ptr + rays * 3 + 0, mask=rm, other=0.0)
    oy = tl.load(o_ptr + rays * 3 + 1, mask=rm, other=0.0)
    oz = tl.load(o_ptr + rays * 3 + 2, mask=rm, other=0.0)
    dx = tl.load(d_ptr + rays * 3 + 0, mask=rm, other=0.0)
    dy = tl.load(d_ptr + rays * 3 + 1, mask=rm, other=0.0)
    dz = tl.load(d_ptr + rays * 3 + 2, mask=rm, other=0.0)
    cx = tl.load(c_ptr + rays * 3 + 0, mask=rm, other=0.0)
    cy = tl.load(c_ptr + rays * 3 + 1, mask=rm, other=0.0)
    cz = tl.load(c_ptr + rays * 3 + 2, mask=rm, other=0.0)
    diam = 2.0 * tl.load(rad_ptr + rays, mask=rm, other=0.5)
    t0 = tl.load(t0_ptr + rays, mask=rm, other=0.0)
    dt = tl.load(dt_ptr + rays, mask=rm, other=0.0)
    n = tl.load(n_ptr + rays, mask=rm, other=0)
    near = tl.load(near_ptr + rays, mask=rm, other=0.0)
    far = tl.load(far_ptr + rays, mask=rm, other=0.0)
    row = tl.load(row_ptr + rays, mask=rm, other=0)

    depth = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_R], dtype=tl.float32)
    rgb = tl.zeros([BLOCK_R, 16], dtype=tl.float32)
    kmax = tl.max(n, 0)
    k = 0
    go = kmax > 0
    while go:
        t = t0 + (k + 0.5) * dt
        x = (ox + t * dx - cx) / diam + 0.5
        y = (oy + t * dy - cy) / diam + 0.5
        z = (oz + t * dz - cz) / diam + 0.5
        live = (k < n) & (depth <= stop_depth) & (t >= near) & (t <= far)
        live = live & (x >= 0.0) & (x <= 1.0) & (y >= 0.0) & (y <= 1.0) & (z >= 0.0) & (z <= 1.0)
        gx = tl.minimum((x * G).to(tl.int32), G - 1)
        gy = tl.minimum((y * G).to(tl.int32), G - 1)
        gz = tl.minimum((z * G).to(tl.int32), G - 1)
        cell = ((row * G + gx) * G + gy) * G + gz
        live = live & (tl.load(occ_ptr + cell, mask=live, other=0) != 0)
        if tl.max(live.to(tl.int32), 0) > 0:
            xc = tl.minimum(tl.maximum(x, 0.0), 1.0)
            yc = tl.minimum(tl.maximum(y, 0.0), 1.0)
            zc = tl.minimum(tl.maximum(z, 0.0), 1.0)
            h1 = tl.zeros([BLOCK_R, H], dtype=tl.float32)
            for lv in tl.static_range(L):
                scale = tl.load(scale_ptr + lv)
                size = tl.load(size_ptr + lv)
                px = xc * scale + 0.5
                py = yc * scale + 0.5
                pz = zc * scale + 0.5
                fx0 = tl.floor(px)
                fy0 = tl.floor(py)
                fz0 = tl.floor(pz)
                fx = px - fx0
                fy = py - fy0
                fz = pz - fz0
                ix = fx0.to(tl.int64)
                iy = fy0.to(tl.int64)
                iz = fz0.to(tl.int64)
                f0 = tl.zeros([BLOCK_R], dtype=tl.float32)
                f1 = tl.zeros([BLOCK_R], dtype=tl.float32)
                base = tab_ptr + lv * T * 2
                for corner in tl.static_range(8):
                    bx = corner & 1
                    by = (corner >> 1) & 1
                    bz = (corner >> 2) & 1
                    wx = fx if bx else 1.0 - fx
                    wy = fy if by else 1.0 - fy
                    wz = fz if bz else 1.0 - fz
                    w = (wz * wy) * wx
                    if lv < N_DENSE:
                        res = tl.load(res_ptr + lv).to(tl.int64)
                        idx = ((ix + bx) + (iy + by) * res + (iz + bz) * res * res) % size
                    else:
                        hy = ((iy + by) * 2654435761) & 0xFFFFFFFF
                        hz = ((iz + bz) * 805459861) & 0xFFFFFFFF
                        idx = ((ix + bx) ^ hy ^ hz) % size
                    f0 += w * tl.load(base + idx * 2, mask=live, other=0.0).to(tl.float32)
                    f1 += w * tl.load(base + idx * 2 + 1, mask=live, other=0.0).to(tl.float32)
                h1 += f0[:, None] * tl.load(w1_ptr + (2 * lv) * H + cols)[None, :]
                h1 += f1[:, None] * tl.load(w1_ptr + (2 * lv + 1) * H + cols)[None, :]
            h1 += tl.load(pre_d_ptr + rays[:, None] * H + cols[None, :], mask=rm[:, None], other=0.0)
            h1 = tl.maximum(h1, 0.0)
            if HALF:
                h1 = h1.to(tl.float16)
            w2 = tl.load(w2_ptr + cols[:, None] * H + cols[None, :])
            h2 = tl.dot(h1, w2, input_precision=PRECISION) + tl.load(b2_ptr + cols)[None, :]
            h2 = tl.maximum(h2, 0.0)
            if HALF:
                h2 = h2.to(tl.float16)
            w3 = tl.load(w3_ptr + cols[:, None] * 16 + c16[None, :])
            h3 = tl.dot(h2, w3, input_precision=PRECISION) + tl.load(b3_ptr + c16)[None, :]
            if HALF:
                h3 = h3.to(tl.float16)
            raw = tl.sum(tl.where(c16[None, :] == 0, h3.to(tl.float32), 0.0), 1)
            sigma = tl.exp(tl.minimum(tl.maximum(raw - 1.0, -15.0), 15.0)) / diam
            wc1 = tl.load(wc1_ptr + c16[:, None] * H + cols[None, :])
            g1 = tl.dot(h3, wc1, input_precision=PRECISION)
            g1 += tl.load(pre_c_ptr + rays[:, None] * H + cols[None, :], mask=rm[:, None], other=0.0)
            g1 = tl.maximum(g1, 0.0)
            if HALF:
                g1 = g1.to(tl.float16)
            wc2 = tl.load(wc2_ptr + cols[:, None] * H + cols[None, :])
            g2 = tl.dot(g1, wc2, input_precision=PRECISION) + tl.load(bc2_ptr + cols)[None, :]
            g2 = tl.maximum(g2, 0.0)
            if HALF:
                g2 = g2.to(tl.float16)
            wc3 = tl.load(wc3_ptr + cols[:, None] * 16 + c16[None, :])
            g3 = tl.dot(g2, wc3, input_precision=PRECISION) + tl.load(bc3_ptr + c16)[None, :]
            colour = 1.0 / (1.0 + tl.exp(-g3.to(tl.float32)))
            tau = tl.where(live, sigma * dt, 0.0)
            wgt = tl.exp(-depth) * (1.0 - tl.exp(-tau))
            rgb += wgt[:, None] * colour
            acc += wgt
            depth += tau
            cnt += live.to(tl.float32)
        k += 1
        go = (k < kmax) & (tl.max(((k < n) & (depth <= stop_depth)).to(tl.int32), 0) > 0)
    tl.store(rgb_ptr + rays[:, None] * 3 + c16[None, :], rgb, mask=rm[:, None] & (c16[None, :] < 3))
    tl.store(acc_ptr + rays, acc, mask=rm)
    tl.store(cnt_ptr + rays, cnt, mask=rm)

