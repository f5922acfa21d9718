/** Time helpers shared by the rules: strict ISO-8601 parsing, no dependence on the host's time zone. */

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;

/** Whether `text` is an ISO-8601 date-time with a zone (`Z` or `±HH:MM`) that denotes a real instant. */
export function isIsoTime(text: unknown): text is string {
  if (typeof text !== 'string' || !ISO_TIME.test(text)) return false;
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) return false;
  // Date.parse rolls 2025-02-30 over to March; compare the calendar fields back.
  const [y, mo, d] = text.slice(0, 10).split('-').map(Number);
  const hh = Number(text.slice(11, 13));
  const mm = Number(text.slice(14, 16));
  if (hh > 23 || mm > 59) return false;
  const probe = new Date(Date.UTC(y ?? 0, (mo ?? 1) - 1, d ?? 1));
  return probe.getUTCFullYear() === y && probe.getUTCMonth() + 1 === mo && probe.getUTCDate() === d;
}
