// docs/guide/05-sdks.md: the TypeScript client's TokenAuth, calling through portcullis.
//
//   PORTCULLIS_TOKEN=<token> node docs/guide/examples/token-auth.mjs [URL]
//
// URL defaults to the quick-start instance's HTTP ext_authz port, which answers the
// way it answers Envoy: 200 with the identity headers, or the deny.
import { TokenAuth } from 'portcullis/client';

// A function is asked on every request, so a token that is rotated on disk or in
// the environment is picked up without a restart.
const auth = new TokenAuth(() => process.env.PORTCULLIS_TOKEN ?? '');
const api = auth.wrapFetch(fetch);

const url = process.argv[2] ?? 'http://127.0.0.1:19192/v1/sandboxes/s1/invoke';
const res = await api(url, { method: 'POST' });
console.log(`typescript: ${res.status} sub=${res.headers.get('x-portcullis-sub')} reason=${res.headers.get('x-portcullis-reason')}`);
