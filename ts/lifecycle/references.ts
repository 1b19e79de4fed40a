// Who still needs an export: the caller that started it, the kernel
// connection, and anyone who took a reference. Memory goes when all let go.
export class References {
  readonly #holders = new Map<string, number>();
  readonly #onLast: () => void;
  #released = false;

  constructor(onLast: () => void) {
    this.#onLast = onLast;
  }

  /** Takes a reference; the returned function drops it (once). */
  take(holder: string): () => void {
    if (this.#released) throw new Error('the export was already released');
    this.#holders.set(holder, (this.#holders.get(holder) ?? 0) + 1);
    let dropped = false;
    return () => {
      if (dropped) return;
      dropped = true;
      this.#drop(holder);
    };
  }

  get count(): number {
    let total = 0;
    for (const n of this.#holders.values()) total += n;
    return total;
  }

  holders(): string[] {
    return [...this.#holders.keys()];
  }

  #drop(holder: string): void {
    const left = (this.#holders.get(holder) ?? 0) - 1;
    if (left > 0) this.#holders.set(holder, left);
    else this.#holders.delete(holder);
    if (this.count === 0 && !this.#released) {
      this.#released = true;
      this.#onLast();
    }
  }
}
