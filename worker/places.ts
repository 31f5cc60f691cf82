/**
 * A fixed number of places for something expensive (a host's concurrent checkpoints): `take`
 * waits for one, `tryTake` does not. Each returns the function that gives the place back (once).
 */
export class Places {
  private used = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly size: number) {}

  get inUse(): number {
    return this.used;
  }

  tryTake(): (() => void) | undefined {
    if (this.used >= this.size) return undefined;
    this.used++;
    return this.giver();
  }

  async take(): Promise<() => void> {
    for (;;) {
      const free = this.tryTake();
      if (free) return free;
      await new Promise<void>((r) => this.waiting.push(r));
    }
  }

  private giver(): () => void {
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.used--;
      this.waiting.shift()?.();
    };
  }
}
