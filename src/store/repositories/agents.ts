/** Registered site agents [providers]. Deleting an agent deletes its commands. */
import { notFound } from '../../domain/errors.js';
import type { Agent } from '../../domain/model.js';
import type { AgentRepository, ListOptions, New, Page } from '../store.js';
import type { AgentsTable } from '../schema.js';
import { countOf, guard, isoTime, isoTimeOrNull, newId, paging, type StoreContext } from './context.js';

function toAgent(r: AgentsTable): Agent {
  return {
    id: r.id,
    vaultId: r.vault_id,
    siteId: r.site_id,
    friendlyName: r.friendly_name,
    credentialHash: r.credential_hash,
    version: r.version,
    dataAddress: r.data_address,
    certificatePem: r.certificate_pem,
    registeredAt: r.registered_at,
    lastHeartbeatAt: r.last_heartbeat_at,
  };
}

/** `AgentRepository` over Kysely. */
export class KyselyAgentRepository implements AgentRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(a: New<Agent>): Promise<Agent> {
    const row: AgentsTable = {
      id: newId(a.id),
      vault_id: a.vaultId,
      site_id: a.siteId,
      friendly_name: a.friendlyName,
      credential_hash: a.credentialHash,
      version: a.version,
      data_address: a.dataAddress,
      certificate_pem: a.certificatePem,
      registered_at: isoTime(a.registeredAt, 'registeredAt'),
      last_heartbeat_at: isoTimeOrNull(a.lastHeartbeatAt, 'lastHeartbeatAt'),
    };
    await guard(this.ctx, { kind: 'agent', key: row.id, op: 'write' }, () =>
      this.ctx.db.insertInto('agents').values(row).execute(),
    );
    return toAgent(row);
  }

  async find(id: string): Promise<Agent | undefined> {
    const r = await this.ctx.db.selectFrom('agents').selectAll().where('id', '=', id).executeTakeFirst();
    return r && toAgent(r);
  }

  async get(id: string): Promise<Agent> {
    const a = await this.find(id);
    if (a === undefined) throw notFound('agent', id);
    return a;
  }

  async findByCredentialHash(credentialHash: string): Promise<Agent | undefined> {
    const r = await this.ctx.db
      .selectFrom('agents')
      .selectAll()
      .where('credential_hash', '=', credentialHash)
      .executeTakeFirst();
    return r && toAgent(r);
  }

  async findBySite(siteId: string): Promise<Agent | undefined> {
    const r = await this.ctx.db
      .selectFrom('agents')
      .selectAll()
      .where('site_id', '=', siteId)
      .orderBy('registered_at', 'desc')
      .orderBy('id', 'desc')
      .limit(1)
      .executeTakeFirst();
    return r && toAgent(r);
  }

  async list(vaultId: string, opts?: ListOptions): Promise<Page<Agent>> {
    const { limit, offset } = paging(opts);
    const q = this.ctx.db.selectFrom('agents').where('vault_id', '=', vaultId);
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('registered_at').orderBy('id').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toAgent), total: countOf(total) };
  }

  async update(id: string, patch: Partial<Omit<Agent, 'id' | 'vaultId' | 'siteId'>>): Promise<Agent> {
    const set: Partial<AgentsTable> = {};
    if (patch.friendlyName !== undefined) set.friendly_name = patch.friendlyName;
    if (patch.credentialHash !== undefined) set.credential_hash = patch.credentialHash;
    if (patch.version !== undefined) set.version = patch.version;
    if (patch.dataAddress !== undefined) set.data_address = patch.dataAddress;
    if (patch.certificatePem !== undefined) set.certificate_pem = patch.certificatePem;
    if (patch.registeredAt !== undefined) set.registered_at = isoTime(patch.registeredAt, 'registeredAt');
    if (patch.lastHeartbeatAt !== undefined) {
      set.last_heartbeat_at = isoTimeOrNull(patch.lastHeartbeatAt, 'lastHeartbeatAt');
    }
    if (Object.keys(set).length > 0) {
      const r = await guard(this.ctx, { kind: 'agent', key: id, op: 'write' }, () =>
        this.ctx.db.updateTable('agents').set(set).where('id', '=', id).executeTakeFirst(),
      );
      if (Number(r.numUpdatedRows) === 0) throw notFound('agent', id);
    }
    return this.get(id);
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('agents').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('agent', id);
  }
}
