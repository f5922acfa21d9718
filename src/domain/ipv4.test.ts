import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { formatIpv4, ipInCidr, isAssignableIn, parseCidr, parseIpv4 } from './ipv4.js';

void describe('parseIpv4', () => {
  void it('reads dotted quads', () => {
    assert.equal(parseIpv4('0.0.0.0'), 0);
    assert.equal(parseIpv4('255.255.255.255'), 0xffffffff);
    assert.equal(parseIpv4('10.1.2.3'), 0x0a010203);
    assert.equal(formatIpv4(0x0a010203), '10.1.2.3');
    assert.equal(formatIpv4(0xffffffff), '255.255.255.255');
  });
  for (const bad of [
    '',
    '10.0.0',
    '10.0.0.0.1',
    '256.0.0.1',
    '10.0.0.01',
    '10.0.0.-1',
    'a.b.c.d',
    '10..0.1',
    ' 10.0.0.1',
  ]) {
    void it(`refuses ${JSON.stringify(bad)}`, () => assert.equal(parseIpv4(bad), undefined));
  }
});

void describe('parseCidr', () => {
  void it('reads blocks', () => {
    assert.deepEqual(parseCidr('10.0.0.0/8'), { network: 0x0a000000, prefix: 8 });
    assert.deepEqual(parseCidr('0.0.0.0/0'), { network: 0, prefix: 0 });
    assert.deepEqual(parseCidr('192.168.1.7/32'), { network: 0xc0a80107, prefix: 32 });
  });
  for (const bad of ['10.0.0.0', '10.0.0.0/33', '10.0.0.1/24', '10.0.0.0/', '/24', '10.0.0.0/2a', 'x/8']) {
    void it(`refuses ${JSON.stringify(bad)}`, () => assert.equal(parseCidr(bad), undefined));
  }
});

void describe('ipInCidr and isAssignableIn', () => {
  const cases: [string, string, boolean, boolean][] = [
    ['10.0.1.5', '10.0.1.0/24', true, true],
    ['10.0.1.0', '10.0.1.0/24', true, false],
    ['10.0.1.255', '10.0.1.0/24', true, false],
    ['10.0.2.5', '10.0.1.0/24', false, false],
    ['172.16.255.254', '172.16.0.0/12', true, true],
    ['172.32.0.1', '172.16.0.0/12', false, false],
    ['8.8.8.8', '0.0.0.0/0', true, true],
    ['192.168.1.7', '192.168.1.7/32', true, true],
    ['192.168.1.6', '192.168.1.6/31', true, true],
    ['192.168.1.7', '192.168.1.6/31', true, true],
    ['bad', '10.0.0.0/8', false, false],
    ['10.0.0.1', 'bad', false, false],
  ];
  for (const [ip, cidr, inside, assignable] of cases) {
    void it(`${ip} in ${cidr}: inside=${inside} assignable=${assignable}`, () => {
      assert.equal(ipInCidr(ip, cidr), inside);
      assert.equal(isAssignableIn(ip, cidr), assignable);
    });
  }
});
