// The states an export goes through, and the only moves between them.
export type ExportState = 'starting' | 'serving' | 'draining' | 'stopped' | 'halted';

const MOVES: Record<ExportState, readonly ExportState[]> = {
  starting: ['serving', 'halted', 'stopped'],
  serving: ['draining', 'halted'],
  draining: ['stopped', 'halted'],
  halted: ['stopped'],
  stopped: [],
};

export class StateMachine {
  #state: ExportState = 'starting';
  readonly #onChange: (from: ExportState, to: ExportState) => void;

  constructor(onChange: (from: ExportState, to: ExportState) => void) {
    this.#onChange = onChange;
  }

  get state(): ExportState {
    return this.#state;
  }

  /** Moves to `to`; false (and no move) when that is not a legal move. */
  move(to: ExportState): boolean {
    const from = this.#state;
    if (!MOVES[from].includes(to)) return false;
    this.#state = to;
    this.#onChange(from, to);
    return true;
  }

  is(...states: ExportState[]): boolean {
    return states.includes(this.#state);
  }
}
