// Logs go to stderr: one JSON object per line for scripts, or a short
// human line on a terminal.
import winston from 'winston';

export type LogFormat = 'json' | 'pretty';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

const pretty = winston.format.printf((entry) => {
  const { level, message, timestamp, event, ...fields } = entry;
  const time = String(timestamp).slice(11, 23);
  const details = Object.entries(fields)
    .filter(([key]) => typeof key === 'string')
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
  const tag = event ? ` [${String(event)}]` : '';
  return `${time} ${level}${tag} ${String(message)}${details ? `  ${details}` : ''}`;
});

export function createLogger(format: LogFormat, level: LogLevel): winston.Logger {
  return winston.createLogger({
    level,
    format: winston.format.combine(
      winston.format.timestamp(),
      format === 'json' ? winston.format.json() : winston.format.combine(winston.format.colorize(), pretty),
    ),
    transports: [new winston.transports.Console({ stderrLevels: [...LOG_LEVELS] })],
  });
}

/** Lets winston write what it holds before the process exits. */
export async function flush(logger: winston.Logger): Promise<void> {
  await new Promise<void>((resolve) => {
    logger.on('finish', () => resolve());
    logger.end();
    setTimeout(resolve, 500).unref();
  });
}
