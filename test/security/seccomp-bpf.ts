/**
 * A classic-BPF interpreter for seccomp filters, enough to evaluate the program the kernel holds
 * (read back with PTRACE_SECCOMP_GET_FILTER) for a given ABI, syscall and arguments: the test can
 * then check ABIs this host cannot execute. Semantics follow the kernel's seccomp checker
 * (net/core/filter.c, kernel/seccomp.c): A and X are 32-bit, loads read struct seccomp_data.
 */
export interface BpfInsn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

export interface SeccompData {
  arch: number;
  nr: number;
  args?: bigint[];
}

/** What the filter answers: "allow", "errno N", "kill", "trap", "trace", "log", "notify". */
export function evaluateBpf(prog: readonly BpfInsn[], data: SeccompData): string {
  return describeAction(runBpf(prog, data));
}

export function describeAction(ret: number): string {
  const action = (ret & 0xffff0000) >>> 0;
  switch (action) {
    case 0x7fff0000: return 'allow';
    case 0x00050000: return `errno ${ret & 0xffff}`;
    case 0x00000000: case 0x80000000: return 'kill';
    case 0x00030000: return 'trap';
    case 0x7ff00000: return 'trace';
    case 0x7ffc0000: return 'log';
    case 0x7fc00000: return 'notify';
    default: return `unknown 0x${action.toString(16)}`;
  }
}

export function runBpf(prog: readonly BpfInsn[], data: SeccompData): number {
  // struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
  const mem = Buffer.alloc(64);
  mem.writeInt32LE(data.nr, 0);
  mem.writeUInt32LE(data.arch >>> 0, 4);
  (data.args ?? []).forEach((a, i) => mem.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + 8 * i));
  let A = 0, X = 0;
  const M = new Array<number>(16).fill(0);
  for (let pc = 0; pc < prog.length; pc++) {
    const { code, jt, jf, k } = prog[pc]!;
    const src = code & 0x08 ? X : k;
    switch (code & 0x07) {
      case 0x00: // LD
        A = ld(code, k, mem, M);
        break;
      case 0x01: // LDX
        X = ld(code, k, mem, M);
        break;
      case 0x02: // ST
        M[k] = A;
        break;
      case 0x03: // STX
        M[k] = X;
        break;
      case 0x04: // ALU
        A = alu(code & 0xf0, A, src) >>> 0;
        break;
      case 0x05: { // JMP
        const op = code & 0xf0;
        if (op === 0x00) { pc += k; break; }
        const yes = op === 0x10 ? A === src >>> 0 : op === 0x20 ? A > src >>> 0 : op === 0x30 ? A >= src >>> 0 : op === 0x40 ? (A & src) !== 0 : bad(code);
        pc += yes ? jt : jf;
        break;
      }
      case 0x06: // RET
        return ((code & 0x18) === 0x10 ? A : k) >>> 0;
      case 0x07: // MISC: TAX / TXA
        if ((code & 0xf8) === 0x00) X = A; else A = X;
        break;
    }
  }
  throw new Error('BPF program ran past its end');
}

function ld(code: number, k: number, mem: Buffer, M: number[]): number {
  switch (code & 0xe0) {
    case 0x00: return k >>> 0; // IMM
    case 0x20: if ((code & 0x18) !== 0x00) bad(code); return mem.readUInt32LE(k); // ABS, word
    case 0x60: return M[k]! >>> 0; // MEM
    case 0x80: return mem.length; // LEN
    default: return bad(code);
  }
}

function alu(op: number, a: number, b: number): number {
  switch (op) {
    case 0x00: return a + b;
    case 0x10: return a - b;
    case 0x20: return Math.imul(a, b);
    case 0x30: return b === 0 ? 0 : Math.floor((a >>> 0) / (b >>> 0));
    case 0x40: return a | b;
    case 0x50: return a & b;
    case 0x60: return b >= 32 ? 0 : a << b;
    case 0x70: return b >= 32 ? 0 : a >>> b;
    case 0x80: return -a;
    case 0x90: return b === 0 ? 0 : (a >>> 0) % (b >>> 0);
    case 0xa0: return a ^ b;
    default: return bad(op);
  }
}

function bad(code: number): never {
  throw new Error(`unsupported BPF instruction 0x${code.toString(16)}`);
}
