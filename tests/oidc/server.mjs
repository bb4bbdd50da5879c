// A real, independent OpenID provider (panva/oidc-provider) for tests:
// client-credentials grant issuing JWT access tokens for one resource.
// Listens on 127.0.0.1:0 and prints "issuer: <url>" once ready.
import http from 'node:http';
import Provider from 'oidc-provider';

const [clientId, clientSecret, audience] = process.argv.slice(2);
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'read gold',
    }],
    scopes: ['read', 'gold'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          audience,
          scope: 'read gold',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  server.on('request', provider.callback());
  console.log(`issuer: ${issuer}`);
});
