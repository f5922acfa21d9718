import * as fs from 'node:fs';

/** Reads exactly `length` bytes at `position` into `buf` at `at`; a short file is an error (our files never shrink under us). */
export function preadExact(
  fd: number,
  buf: Buffer,
  at: number,
  length: number,
  position: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      if (done >= length) return resolve();
      fs.read(fd, buf, at + done, length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(new Error(`unexpected end of file at byte ${position + done}`));
        done += n;
        step();
      });
    };
    step();
  });
}

/** `preadExact` on the calling thread: for small reads of recently written (page-cached) files. */
export function preadExactSync(fd: number, buf: Buffer, at: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, at + done, length - done, position + done);
    if (n === 0) throw new Error(`unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

/** Writes all of `data` at `position`. */
export function pwriteAll(fd: number, data: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      if (done >= data.length) return resolve();
      fs.write(fd, data, done, data.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        step();
      });
    };
    step();
  });
}

/** `fdatasync` as a promise. */
export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** A promise chain that runs tasks one at a time, in call order. A failed task does not block later ones. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();

  /** Runs `task` after every task queued before it has settled. */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task, task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}
