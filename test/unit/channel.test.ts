import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentChannel } from '../../runtime/agent/channel.js';
import { pipe2 } from '../../runtime/native/pipe.js';

describe('AgentChannel.close', () => {
  it('closes its write fd once: a second close leaves alone the file that got the number since', async () => {
    const out = pipe2();
    const ctl = pipe2();
    const err = pipe2();
    const channel = new AgentChannel(out.read, ctl.write, err.read);
    channel.close(); // a fault (or a broken VPS) closed it early...
    const file = path.join(os.tmpdir(), `runbox-channel-${process.pid}`);
    // ...files opened since take the lowest free numbers: open until one has the channel's old number
    const opened: number[] = [];
    for (let i = 0; i < 256 && !opened.includes(ctl.write); i++) opened.push(fs.openSync(file, 'w'));
    expect(opened).toContain(ctl.write);
    try {
      channel.close(); // ...and destroy closes it again
      expect(() => fs.fstatSync(ctl.write)).not.toThrow();
      fs.writeSync(ctl.write, 'still mine');
    } finally {
      fs.rmSync(file, { force: true });
      for (const f of opened) {
        try {
          fs.closeSync(f);
        } catch {
          /* closed by the channel when the bug is back */
        }
      }
      for (const f of [out.write, ctl.read, err.write]) fs.closeSync(f);
    }
  });
});
