// Verifies a JWT the way an independent resource server would: issuer
// discovery, then the published JWKS, with the `jose` library.
// Usage: node verify.mjs ISSUER AUDIENCE TOKEN  → prints {header, payload}
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [issuer, audience, token] = process.argv.slice(2);
const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
if (discovery.issuer !== issuer) {
  throw new Error(`discovery names issuer ${discovery.issuer}, expected ${issuer}`);
}
const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));
const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience });
console.log(JSON.stringify({ header: protectedHeader, payload }));
