# transform.py: turns one engine/backends/cuda/*.cu file into host C++ for the CUDA emulator (make test-gpu-emu):
#   kernel<<<grid, block, smem>>>(args);   ->   ::emu::launch(dim3(grid), dim3(block), size_t(smem), [&] { kernel(args); });
#   extern __shared__ unsigned char smem_raw[];   ->   the launch's dynamic shared memory
# and makes the caching allocator request exact sizes, so AddressSanitizer catches any access past a buffer.
# Usage: python3 transform.py in.cu out.cpp
import re, sys

def split_top(s):
    parts, depth, cur = [], 0, ''
    for ch in s:
        if ch in '([{<': depth += 1
        if ch in ')]}>': depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur.strip()); cur = ''
        else:
            cur += ch
    parts.append(cur.strip())
    return parts

def transform(src):
    out, i = '', 0
    while True:
        j = src.find('<<<', i)
        if j < 0:
            out += src[i:]; break
        # callee: identifier (with ::) optionally followed by template args, ending right before <<<
        k = j
        while src[k-1].isspace(): k -= 1
        if src[k-1] == '>':
            depth = 0
            while True:
                k -= 1
                if src[k] == '>': depth += 1
                elif src[k] == '<':
                    depth -= 1
                    if depth == 0: break
        while src[k-1].isalnum() or src[k-1] in '_:': k -= 1
        callee = src[k:j].strip()
        e = src.find('>>>', j)
        cfg = split_top(src[j+3:e])
        p = e + 3
        assert src[p] == '(', src[p-40:p+40]
        depth, q = 0, p
        while True:
            if src[q] == '(': depth += 1
            elif src[q] == ')':
                depth -= 1
                if depth == 0: break
            q += 1
        args = src[p+1:q]
        grid, block = cfg[0], cfg[1]
        smem = cfg[2] if len(cfg) > 2 else '0'
        out += src[i:k] + '::emu::launch(dim3(%s), dim3(%s), size_t(%s), [&] { %s(%s); })' % (grid, block, smem, callee, args)
        i = q + 1
    out = out.replace('extern __shared__ unsigned char smem_raw[];', 'unsigned char* smem_raw = ::emu::dyn_smem();')
    out = re.sub(r'extern __shared__ __align__\(\d+\) unsigned char (\w+)\[\];', r'unsigned char* \1 = ::emu::dyn_smem();', out)
    out = out.replace('(std::max<size_t>(nbytes, 1) + 511) & ~size_t(511)', 'std::max<size_t>(nbytes, 1)')
    return out

src = open(sys.argv[1]).read()
open(sys.argv[2], 'w').write(transform(src))
