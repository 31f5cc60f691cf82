import { describe, it, expect } from 'vitest';
import { MiB, parseDuration, parseSize } from '../../core/units.js';
import { thrown } from '../helpers/errors.js';

describe('MiB', () => {
  it('is 1048576', () => expect(MiB).toBe(1_048_576));
});

describe('parseSize', () => {
  it.each([
    ['1', 1],
    ['1048576', 1_048_576],
    ['512b', 512],
    ['512B', 512],
    ['512k', 524_288],
    ['512K', 524_288],
    ['1kb', 1024],
    ['1KiB', 1024],
    ['256m', 268_435_456],
    ['256M', 268_435_456],
    ['256mb', 268_435_456],
    ['256MiB', 268_435_456],
    ['1g', 1_073_741_824],
    ['1G', 1_073_741_824],
    ['1gib', 1_073_741_824],
    ['1t', 1_099_511_627_776],
    ['2T', 2_199_023_255_552],
    [' 64m ', 67_108_864],
    ['64 m', 67_108_864],
    ['0.5g', 536_870_912],
    ['1.5k', 1536],
    ['0.5k', 512],
    ['1.25m', 1_310_720],
    ['1.7', 1],
    ['2.0001k', 2048],
  ])('parseSize(%j) = %d', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
  });

  it.each([
    '',
    ' ',
    'abc',
    'm',
    '1x',
    '1kk',
    '1mg',
    '1.m',
    '.5m',
    '1,5m',
    '1e6',
    '0x10',
    '1 g b',
    '-1',
    '-1m',
    '+1m',
    'Infinity',
    'NaN',
  ])('rejects %j with invalid_argument', (input) => {
    const e = thrown(() => parseSize(input));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toBe(`invalid size "${input}" (examples: 256m, 1g, 512k)`);
  });

  it.each(['0', '0m', '0.0g', '00k', '0.5', '0.9b', '9'.repeat(400)])('rejects %j as not greater than zero', (input) => {
    const e = thrown(() => parseSize(input));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toBe(`invalid size "${input}": must be greater than zero`);
  });
});

describe('parseDuration', () => {
  it.each([
    ['90', 90],
    ['1', 1],
    ['30s', 30],
    ['30S', 30],
    ['5m', 300],
    ['5M', 300],
    ['1h', 3600],
    ['1H', 3600],
    ['250ms', 0.25],
    ['250MS', 0.25],
    ['1ms', 0.001],
    ['1.5h', 5400],
    ['2.5m', 150],
    ['0.5s', 0.5],
    ['0.5', 0.5],
    [' 10 s ', 10],
    ['1500ms', 1.5],
  ])('parseDuration(%j) = %d seconds', (input, seconds) => {
    expect(parseDuration(input)).toBe(seconds);
  });

  it.each(['', ' ', 'abc', 's', '5d', '5 min', '5sec', '5sm', '1e3', '1.s', '.5s', '-5s', '-1', '+5s', '5 s s', 'Infinity'])(
    'rejects %j with invalid_argument',
    (input) => {
      const e = thrown(() => parseDuration(input));
      expect(e.code).toBe('invalid_argument');
      expect(e.message).toBe(`invalid duration "${input}" (examples: 30s, 5m, 1h)`);
    },
  );

  it.each(['0', '0s', '0ms', '0.0h', '00m'])('rejects %j as not greater than zero', (input) => {
    const e = thrown(() => parseDuration(input));
    expect(e.code).toBe('invalid_argument');
    expect(e.message).toBe(`invalid duration "${input}": must be greater than zero`);
  });
});
