/** Installation key/value settings. */
import type { SettingsRepository } from '../store.js';
import type { StoreContext } from './context.js';

/** `SettingsRepository` over Kysely; `set` inserts or overwrites. */
export class KyselySettingsRepository implements SettingsRepository {
  constructor(private readonly ctx: StoreContext) {}

  async get(key: string): Promise<string | undefined> {
    const r = await this.ctx.db
      .selectFrom('settings')
      .select('value')
      .where('key', '=', key)
      .executeTakeFirst();
    return r?.value;
  }

  async set(key: string, value: string): Promise<void> {
    await this.ctx.db
      .insertInto('settings')
      .values({ key, value })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value }))
      .execute();
  }
}
