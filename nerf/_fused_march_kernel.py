"""The Triton kernel of ``nerf.fused_march`` (imported on first use: importing the package never imports triton).

``triton.jit`` decides when it decorates whether a kernel is compiled or run by Triton's CPU interpreter
(``TRITON_INTERPRET=1``, read when triton is first imported). The hash primes are ``nerf.encoding.HASH_PRIMES``
written out (a kernel reads no Python globals); the parity tests, which hash, hold them equal.

Weights are [in, out] row-major; the last layers are padded to 16 outputs. Under HALF every layer's output is
rounded to float16 as autocast's Linear rounds it, and the block matrix products take float16 inputs (float32 sums).
"""

import triton
import triton.language as tl


@triton.jit
def _dense(h, w_ptr, b_ptr, K: tl.constexpr, N: tl.constexpr, HALF: tl.constexpr, PRECISION: tl.constexpr):
    """h [B, K] @ W [K, N] + b [N], float32 out (float16-rounded under HALF)."""
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    w = tl.load(w_ptr + rk[:, None] * N + rn[None, :])
    if HALF:
        h = h.to(tl.float16)
    out = tl.dot(h, w, input_precision=PRECISION) + tl.load(b_ptr + rn)[None, :]
    if HALF:
        out = out.to(tl.float16).to(tl.float32)
    return out


@triton.jit
def _load3(ptr, rays, rm, other: tl.constexpr):
    """The three components of per-ray vectors [R, 3]."""
    return (tl.load(ptr + rays * 3 + 0, mask=rm, other=other), tl.load(ptr + rays * 3 + 1, mask=rm, other=other),
            tl.load(ptr + rays * 3 + 2, mask=rm, other=other))


@triton.jit
def _column(h, j: tl.constexpr):
    """Column j of h [B, 16]."""
    c16 = tl.arange(0, 16)
    return tl.sum(tl.where(c16[None, :] == j, h, 0.0), 1)


@triton.jit
def _grid_encoding(x, y, z, live, tab_ptr, scale_ptr, res_ptr, size_ptr,
                   L: tl.constexpr, N_DENSE: tl.constexpr, T: tl.constexpr, K2: tl.constexpr):
    """enc(x, y, z) transposed, [K2, B] (rows 2 lv and 2 lv + 1: level lv's features; rows from 2 L on zero): the hash
    grid (``nerf.encoding``, 2 features per level, points clamped to the cube).

    Transposed so that the rays run along a warp's threads: each thread computes its own rays' hashes and gathers,
    where a [B, K2] tile would spread the features over the threads and repeat every ray's work on each of them."""
    rk = tl.arange(0, K2)
    enc = tl.zeros([K2, x.shape[0]], dtype=tl.float32)
    xc = tl.minimum(tl.maximum(x, 0.0), 1.0)
    yc = tl.minimum(tl.maximum(y, 0.0), 1.0)
    zc = tl.minimum(tl.maximum(z, 0.0), 1.0)
    pair = tl.arange(0, 2)
    # A loop over the levels, not unrolled: unrolled for both fields, the kernel took 15 minutes to build for sm_90
    # (a 10 MB PTX). Indices in 32 bits: a hashed level's size is the table size T, a power of two, so its modulo is
    # a mask of the hash's low bits (which 32-bit products keep); a dense level's index is below twice its size, so
    # its modulo is one subtraction. (64-bit remainders were a subroutine per corner.)
    base = tab_ptr  # level lv's rows (pointer steps are 64-bit)
    for lv in tl.range(0, L):
        scale = tl.load(scale_ptr + lv)
        px = xc * scale + 0.5
        py = yc * scale + 0.5
        pz = zc * scale + 0.5
        gx = tl.floor(px)
        gy = tl.floor(py)
        gz = tl.floor(pz)
        fx = px - gx
        fy = py - gy
        fz = pz - gz
        ix = gx.to(tl.int32)
        iy = gy.to(tl.int32)
        iz = gz.to(tl.int32)
        f0 = tl.zeros(x.shape, dtype=tl.float32)
        f1 = tl.zeros(x.shape, dtype=tl.float32)
        dense = lv < N_DENSE
        res = tl.load(res_ptr + lv)  # (read by the dense levels only)
        size = tl.load(size_ptr + lv).to(tl.int32)
        for corner in tl.static_range(8):
            bx = corner & 1
            by = (corner >> 1) & 1
            bz = (corner >> 2) & 1
            wx = fx if bx else 1.0 - fx
            wy = fy if by else 1.0 - fy
            wz = fz if bz else 1.0 - fz
            w = (wz * wy) * wx
            if dense:
                idx = (ix + bx) + ((iy + by) + (iz + bz) * res) * res
                idx = tl.where(idx >= size, idx - size, idx)
            else:
                # (-1640531535: the prime 2654435761 as a signed 32-bit integer, the same low 32 bits)
                idx = ((ix + bx) ^ ((iy + by) * -1640531535) ^ ((iz + bz) * 805459861)) & (T - 1)
            # both features of the row in one 8-byte (4-byte for float16) load
            f = tl.load(base + (idx * 2)[:, None] + pair[None, :], mask=live[:, None], other=0.0).to(tl.float32)
            a, b = tl.split(f)
            f0 += w * a
            f1 += w * b
        enc = tl.where(rk[:, None] == 2 * lv, f0[None, :], enc)
        enc = tl.where(rk[:, None] == 2 * lv + 1, f1[None, :], enc)
        base += T * 2
    return enc


@triton.jit
def _first_layer(enc, w_ptr, pre_ptr, rays, rm, K2: tl.constexpr, H: tl.constexpr, HALF: tl.constexpr,
                 PRECISION: tl.constexpr):
    """enc [K2, B] transposed: enc^T @ W [K2, H] + the per-ray part of the layer (pre [R, H], bias included)."""
    rk = tl.arange(0, K2)
    cols = tl.arange(0, H)
    w = tl.load(w_ptr + rk[:, None] * H + cols[None, :])
    pre = tl.load(pre_ptr + rays[:, None] * H + cols[None, :], mask=rm[:, None], other=0.0)
    e = tl.trans(enc)
    if HALF:
        e = e.to(tl.float16)
    return tl.dot(e, w, acc=pre, input_precision=PRECISION)


@triton.jit
def _freq_encoding(enc, v, d: tl.constexpr, NF: tl.constexpr, KW: tl.constexpr):
    """enc [KW, B] (``freq_encode``'s columns, transposed) with axis d's rows set from its value v: v itself (row d),
    sin(2^k pi v) (row 3 + d NF + k) and cos(2^k pi v) (row 3 + 3 NF + d NF + k)."""
    rk = tl.arange(0, KW)
    enc = tl.where(rk[:, None] == d, v[None, :], enc)
    # sin and cos of pi v once, the higher frequencies by doubling: sin 2a = 2 sin a cos a, cos 2a = 1 - 2 sin^2 a
    # (each doubling at most doubles the error: a few float32 ulps at NF = 4). A sin or cos per frequency inlined
    # libdevice's large-argument path 24 times: 60% of the float16 kernel's PTX, and 70% of its build time.
    a = v * 3.141592653589793
    s = tl.sin(a)
    c = tl.cos(a)
    for k in tl.static_range(NF):
        enc = tl.where(rk[:, None] == 3 + d * NF + k, s[None, :], enc)
        enc = tl.where(rk[:, None] == 3 + 3 * NF + d * NF + k, c[None, :], enc)
        s, c = 2.0 * s * c, 1.0 - 2.0 * s * s
    return enc


@triton.jit
def _density_colour(h1, pre_c_ptr, rays, rm, w2_ptr, b2_ptr, w3_ptr, b3_ptr, wc1_ptr, zero_ptr,
                    wc2_ptr, bc2_ptr, wc3_ptr, bc3_ptr, H: tl.constexpr, HALF: tl.constexpr,
                    PRECISION: tl.constexpr):
    """A field's MLPs after its first layer's output h1: density (raw, before trunc_exp) and colour."""
    cols = tl.arange(0, H)
    if HALF:
        h1 = h1.to(tl.float16).to(tl.float32)
    h2 = tl.maximum(_dense(tl.maximum(h1, 0.0), w2_ptr, b2_ptr, H, H, HALF, PRECISION), 0.0)
    h3 = _dense(h2, w3_ptr, b3_ptr, H, 16, HALF, PRECISION)
    g1 = _dense(h3, wc1_ptr, zero_ptr, 16, H, HALF, PRECISION)  # row 0 of wc1 is zero: it reads h3[:, 1:]
    g1 += tl.load(pre_c_ptr + rays[:, None] * H + cols[None, :], mask=rm[:, None], other=0.0)
    if HALF:
        g1 = g1.to(tl.float16).to(tl.float32)
    g2 = tl.maximum(_dense(tl.maximum(g1, 0.0), wc2_ptr, bc2_ptr, H, H, HALF, PRECISION), 0.0)
    g3 = _dense(g2, wc3_ptr, bc3_ptr, H, 16, HALF, PRECISION)
    return _column(h3, 0), 1.0 / (1.0 + tl.exp(-g3))


@triton.jit
def march_kernel(
        # per ray: head space, camera space, the step, the person
        o_ptr, d_ptr, c_ptr, rad_ptr, cam_ptr, camw_ptr, lo_ptr, hi_ptr, t0_ptr, dt_ptr, n_ptr, m_ptr,
        near_h_ptr, far_h_ptr, near_t_ptr, far_t_ptr, hit_h_ptr, hit_t_ptr, row_ptr,
        occ_h_ptr, occ_t_ptr, zero_ptr,
        # head field: per-ray first-layer parts, grid, layers
        hpre_d_ptr, hpre_c_ptr, htab_ptr, hscale_ptr, hres_ptr, hsize_ptr,
        hw1_ptr, hw2_ptr, hb2_ptr, hw3_ptr, hb3_ptr, hwc1_ptr, hwc2_ptr, hbc2_ptr, hwc3_ptr, hbc3_ptr,
        # torso field: warp, grid, layers
        tpre_w_ptr, tww1_ptr, tww2_ptr, twb2_ptr, tww3_ptr, twb3_ptr, twarp_ptr,
        tpre_d_ptr, tpre_c_ptr, ttab_ptr, tscale_ptr, tres_ptr, tsize_ptr,
        tw1_ptr, tw2_ptr, tb2_ptr, tw3_ptr, tb3_ptr, twc1_ptr, twc2_ptr, tbc2_ptr, twc3_ptr, tbc3_ptr,
        # out
        rgb_ptr, acc_h_ptr, acc_t_ptr, cnt_ptr,
        R, G, stop_depth, torso_depth,
        L: tl.constexpr, N_DENSE: tl.constexpr, T: tl.constexpr,
        TORSO: tl.constexpr, TL: tl.constexpr, TN_DENSE: tl.constexpr, TT: tl.constexpr, NF: tl.constexpr,
        H: tl.constexpr, K2: tl.constexpr, TK2: tl.constexpr, KW: tl.constexpr, BLOCK_R: tl.constexpr,
        HALF: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rays = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rays < R
    ox, oy, oz = _load3(o_ptr, rays, rm, 0.0)
    dx, dy, dz = _load3(d_ptr, rays, rm, 0.0)
    cx, cy, cz = _load3(c_ptr, rays, rm, 0.0)
    diam = 2.0 * tl.load(rad_ptr + rays, mask=rm, other=0.5)
    t0 = tl.load(t0_ptr + rays, mask=rm, other=0.0)
    dt = tl.load(dt_ptr + rays, mask=rm, other=0.0)
    n = tl.load(n_ptr + rays, mask=rm, other=0)
    near_h = tl.load(near_h_ptr + rays, mask=rm, other=0.0)
    far_h = tl.load(far_h_ptr + rays, mask=rm, other=0.0)
    hit_h = tl.load(hit_h_ptr + rays, mask=rm, other=0) != 0
    row = tl.load(row_ptr + rays, mask=rm, other=0)
    if TORSO:
        ux, uy, uz = _load3(cam_ptr, rays, rm, 1.0)
        # the direction whose points the torso's field reads: the ray's own, or with a tracked torso motion the ray
        # of the pixel it names in the reference frame (TorsoMotion.track_points keeps each point's depth)
        vx, vy, vz = _load3(camw_ptr, rays, rm, 1.0)
        lx, ly, lz = _load3(lo_ptr, rays, rm, 0.0)
        hx, hy, hz = _load3(hi_ptr, rays, rm, 1.0)
        ex = hx - lx
        ey = hy - ly
        ez = hz - lz
        m = tl.load(m_ptr + rays, mask=rm, other=1)
        warp_share = tl.load(twarp_ptr + rays, mask=rm, other=1.0)  # the learned warp's share (0: a canonical torso)
        near_t = tl.load(near_t_ptr + rays, mask=rm, other=0.0)
        far_t = tl.load(far_t_ptr + rays, mask=rm, other=0.0)
        hit_t = tl.load(hit_t_ptr + rays, mask=rm, other=0) != 0

    depth = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc_h = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_R], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_R], dtype=tl.float32)
    rgb = tl.zeros([BLOCK_R, 16], dtype=tl.float32)
    # the torso's values, queried once per m steps at the interval's midpoint and held over its fine samples
    held_live = tl.zeros([BLOCK_R], dtype=tl.int1)
    held_sig = tl.zeros([BLOCK_R], dtype=tl.float32)
    held_col = tl.zeros([BLOCK_R, 16], dtype=tl.float32)
    kmax = tl.max(n, 0)
    k = 0
    go = kmax > 0
    while go:
        t = t0 + (k + 0.5) * dt
        going = (k < n) & (depth <= stop_depth)
        # the head: head space, then the sphere's [0, 1]^3 (AvatarModel._march's arithmetic, in its order)
        x = (ox + t * dx - cx) / diam + 0.5
        y = (oy + t * dy - cy) / diam + 0.5
        z = (oz + t * dz - cz) / diam + 0.5
        live_h = going & hit_h & (t >= near_h) & (t <= far_h)
        live_h = live_h & (x >= 0.0) & (x <= 1.0) & (y >= 0.0) & (y <= 1.0) & (z >= 0.0) & (z <= 1.0)
        cell = ((row * G + tl.minimum((x * G).to(tl.int32), G - 1)) * G
                + tl.minimum((y * G).to(tl.int32), G - 1)) * G + tl.minimum((z * G).to(tl.int32), G - 1)
        live_h = live_h & (tl.load(occ_h_ptr + cell, mask=live_h, other=0) != 0)
        sig_h = tl.zeros([BLOCK_R], dtype=tl.float32)
        col_h = tl.zeros([BLOCK_R, 16], dtype=tl.float32)
        if tl.max(live_h.to(tl.int32), 0) > 0:
            enc = _grid_encoding(x, y, z, live_h, htab_ptr, hscale_ptr, hres_ptr, hsize_ptr, L, N_DENSE, T, K2)
            h1 = _first_layer(enc, hw1_ptr, hpre_d_ptr, rays, rm, K2, H, HALF, PRECISION)
            raw, col_h = _density_colour(h1, hpre_c_ptr, rays, rm, hw2_ptr, hb2_ptr, hw3_ptr, hb3_ptr,
                                         hwc1_ptr, zero_ptr, hwc2_ptr, hbc2_ptr, hwc3_ptr, hbc3_ptr, H, HALF,
                                         PRECISION)
            sig_h = tl.where(live_h, tl.exp(tl.minimum(tl.maximum(raw - 1.0, -15.0), 15.0)) / diam, 0.0)
        sig_t = tl.zeros([BLOCK_R], dtype=tl.float32)
        col_t = tl.zeros([BLOCK_R, 16], dtype=tl.float32)
        live_t = tl.zeros([BLOCK_R], dtype=tl.int1)
        query_t = tl.zeros([BLOCK_R], dtype=tl.int1)
        if TORSO:
            # the torso: its step's midpoint tc (nerf.march.coarse_t), in the torso box's [0, 1]^3
            first = (k % m) == 0
            tc = t0 + ((k - k % m) + m * 0.5) * dt
            xt = (tc * ux - lx) / ex
            yt = (tc * uy - ly) / ey
            zt = (tc * uz - lz) / ez
            query_t = first & going & hit_t & (tc >= near_t) & (tc <= far_t)
            query_t = query_t & (xt >= 0.0) & (xt <= 1.0) & (yt >= 0.0) & (yt <= 1.0) & (zt >= 0.0) & (zt <= 1.0)
            cell = ((row * G + tl.minimum((xt * G).to(tl.int32), G - 1)) * G
                    + tl.minimum((yt * G).to(tl.int32), G - 1)) * G + tl.minimum((zt * G).to(tl.int32), G - 1)
            query_t = query_t & (tl.load(occ_t_ptr + cell, mask=query_t, other=0) != 0)
            held_live = tl.where(first, query_t, held_live)
            if tl.max(query_t.to(tl.int32), 0) > 0:
                # the warp x' = clamp(x + D(gamma(x), gamma(et), z_shape)) (TorsoField), then its field at x'
                xf = (tc * vx - lx) / ex
                yf = (tc * vy - ly) / ey
                zf = (tc * vz - lz) / ez
                encw = tl.zeros([KW, BLOCK_R], dtype=tl.float32)
                encw = _freq_encoding(encw, xf, 0, NF, KW)
                encw = _freq_encoding(encw, yf, 1, NF, KW)
                encw = _freq_encoding(encw, zf, 2, NF, KW)
                w1 = _first_layer(encw, tww1_ptr, tpre_w_ptr, rays, rm, KW, H, HALF, PRECISION)
                if HALF:
                    w1 = w1.to(tl.float16).to(tl.float32)
                w2 = tl.maximum(_dense(tl.maximum(w1, 0.0), tww2_ptr, twb2_ptr, H, H, HALF, PRECISION), 0.0)
                off = _dense(w2, tww3_ptr, twb3_ptr, H, 16, HALF, PRECISION)
                wx = tl.minimum(tl.maximum(xf + warp_share * _column(off, 0), 0.0), 1.0)
                wy = tl.minimum(tl.maximum(yf + warp_share * _column(off, 1), 0.0), 1.0)
                wz = tl.minimum(tl.maximum(zf + warp_share * _column(off, 2), 0.0), 1.0)
                enc = _grid_encoding(wx, wy, wz, query_t, ttab_ptr, tscale_ptr, tres_ptr, tsize_ptr, TL, TN_DENSE, TT,
                                     TK2)
                h1 = _first_layer(enc, tw1_ptr, tpre_d_ptr, rays, rm, TK2, H, HALF, PRECISION)
                raw_t, col_t = _density_colour(h1, tpre_c_ptr, rays, rm, tw2_ptr, tb2_ptr, tw3_ptr,
                                               tb3_ptr, twc1_ptr, zero_ptr, twc2_ptr, tbc2_ptr, twc3_ptr, tbc3_ptr,
                                               H, HALF, PRECISION)
                new_sig = tl.exp(tl.minimum(tl.maximum(raw_t - 1.0, -15.0), 15.0)) / torso_depth
                held_sig = tl.where(query_t, new_sig, held_sig)
                held_col = tl.where(query_t[:, None], col_t, held_col)
            live_t = going & held_live
            sig_t = tl.where(live_t, held_sig, 0.0)
            col_t = held_col
        # NeRF's quadrature on the fixed step; where both fields hold density each takes its share (nerf.march)
        sig = sig_h + sig_t
        tau = sig * dt
        share = tl.exp(-depth) * (1.0 - tl.exp(-tau)) / tl.maximum(sig, 1e-30)
        rgb += (share * sig_h)[:, None] * col_h + (share * sig_t)[:, None] * col_t
        acc_h += share * sig_h
        acc_t += share * sig_t
        depth += tau
        cnt += live_h.to(tl.float32) + query_t.to(tl.float32)
        k += 1
        go = (k < kmax) & (tl.max(((k < n) & (depth <= stop_depth)).to(tl.int32), 0) > 0)
    c16 = tl.arange(0, 16)
    tl.store(rgb_ptr + rays[:, None] * 3 + c16[None, :], rgb, mask=rm[:, None] & (c16[None, :] < 3))
    tl.store(acc_h_ptr + rays, acc_h, mask=rm)
    tl.store(acc_t_ptr + rays, acc_t, mask=rm)
    tl.store(cnt_ptr + rays, cnt, mask=rm)
