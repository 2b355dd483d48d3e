// Used by tests/webhooks_*.rs: checks the Standard Webhooks signature of every request a
// test receiver recorded, with the `standardwebhooks` package (not the hub's own code).
// Usage: node verify_webhooks.mjs <requests.jsonl> <whsec_secret>
// Each line: {"headers": {"webhook-id": ..., ...}, "body": "<exact body text>"}.
// Prints `verified N` and exits 0 only if every request verifies and a tampered copy of
// each does not.
import { readFileSync } from 'node:fs';
import { Webhook } from 'standardwebhooks';

const [file, secret] = process.argv.slice(2);
const hook = new Webhook(secret);
const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim());
let failed = 0;
for (const [i, line] of lines.entries()) {
  const { headers, body } = JSON.parse(line);
  try {
    hook.verify(body, headers);
  } catch (err) {
    failed++;
    console.log(`request ${i} (${headers['webhook-id']}): ${err.message}`);
    continue;
  }
  try {
    hook.verify(body + ' ', headers);
    failed++;
    console.log(`request ${i}: a tampered body verified`);
  } catch {}
}
console.log(`verified ${lines.length - failed} of ${lines.length}`);
process.exit(failed === 0 && lines.length > 0 ? 0 : 1);
