// The OpenID provider the tests start: panva's oidc-provider (certified),
// configured from a JSON file the test writes (argument 1):
//   { "port": N, "issuer": "http://127.0.0.1:N", "keys": [private JWKs],
//     "clients": [client metadata], "users": { "alice": { "email": ..., "groups": [...] } } }
// Its development login page accepts any password; the login names the
// account. Prints "listening" once it serves. Test use only.
import fs from 'node:fs';
import Provider from 'oidc-provider';

const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const users = settings.users || {};

const provider = new Provider(settings.issuer, {
  clients: settings.clients,
  jwks: { keys: settings.keys },
  clientDefaults: { id_token_signed_response_alg: settings.keys[0].alg || 'ES256' },
  // Claims in the ID token itself (the gateway reads no userinfo).
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  findAccount(ctx, id) {
    const user = users[id] || {};
    return {
      accountId: id,
      claims: () => ({ sub: id, email: user.email, email_verified: true, groups: user.groups || [] }),
    };
  },
  // First-party clients: no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email groups');
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    // Client-credentials tokens as JWTs for the gateway's [[jwt.issuers]].
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:ai-gateway',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'models chat',
        audience: 'ai-gateway',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 600,
        jwt: { sign: { alg: settings.keys[0].alg || 'ES256' } },
      }),
    },
  },
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, IdToken: 600, AccessToken: 600 },
});
provider.proxy = true;

const server = provider.listen(settings.port, '127.0.0.1', () => {
  process.stdout.write('listening\n');
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
